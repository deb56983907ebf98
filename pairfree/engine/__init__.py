"""The training engine every loop runs on (pretraining of the evaluator, judge and teacher; the editor; the
supervised yardstick): the run directory's resumable state, metrics and plots, the step loop with its time limit
and progress, and the :class:`~pairfree.engine.strategy.Strategy` that hides whether updates run in one process
(AdamW) or on DeepSpeed engines.

Modules, bottom-up: :mod:`.state` (atomic checkpoints, RNG, EMA), :mod:`.runlog` (``metrics.jsonl``,
TensorBoard, ``loss.png``), :mod:`.strategy` (one process), :mod:`.deepspeed` (every DeepSpeed call),
:mod:`.loop` (the step loop).
"""
