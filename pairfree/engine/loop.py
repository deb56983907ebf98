"""The step loop every trainer runs: steps ``start .. total``, each logged every ``log_every`` steps, a checkpoint
every ``ckpt_every`` steps and at the end, a wall-time limit, and a progress display (a bar on a terminal,
periodic plain lines in a log)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pairfree.engine.runlog import RunLog
from pairfree.progress import Progress


@dataclass
class LoopResult:
    step: int  # the steps done (== total unless stopped early)
    wall_s: float  # training wall time, earlier runs of a resumed one included, evaluations excluded
    stopped_early: bool  # the time limit ended the run
    logs: dict  # the last step's logs


def run_steps(
    step_fn: Callable[[int], dict],
    start: int,
    total: int,
    log: RunLog,
    save: Callable[[int, float], None],
    *,
    log_every: int,
    ckpt_every: int,
    max_minutes: float = 0.0,
    wall_s: float = 0.0,
    desc: str = "training",
    shown: tuple[str, ...] | None = None,
    after_step: Callable[[int, float], list[dict]] | None = None,
    show_progress: bool = True,
    stop_together: Callable[[bool], bool] | None = None,
) -> LoopResult:
    """Run ``step_fn(step) -> logs`` for ``step`` in ``start .. total - 1``.

    ``logs`` go to ``log`` as ``{"step": step + 1, **logs}`` every ``log_every`` steps and at the last one; the
    progress display shows the keys in ``shown`` (all when None). ``save(steps_done, wall_s)`` runs every
    ``ckpt_every`` steps and once at the end. ``after_step(steps_done, wall_s)`` (evaluations, sample grids)
    returns extra rows to log; its time does not count as training time. The run stops early, after a
    checkpoint, once the wall time passes ``max_minutes`` (0: no limit). With several ranks, ``stop_together(flag)``
    must say whether any rank is past the limit, so that all stop at the same step."""
    bar = Progress(total, initial=start, desc=desc, disable=not show_progress)
    t0, excluded, logs, step, stopped = time.time(), 0.0, {}, start, False
    wall = wall_s
    while step < total:
        logs = step_fn(step)
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if (shown is None or k in shown) and _number(v)})
        if step % log_every == 0 or step == total:
            log.write({"step": step, **logs})
        wall = wall_s + time.time() - t0 - excluded
        if after_step is not None:
            e0 = time.time()
            for row in after_step(step, wall):
                log.write(row)
            excluded += time.time() - e0
        if step % ckpt_every == 0 and step < total:
            save(step, wall)
        late = bool(max_minutes) and wall > max_minutes * 60
        if stop_together is not None and max_minutes:
            late = stop_together(late)
        if late and step < total:
            stopped = True
            break
    bar.close()
    save(step, wall)
    log.plot()
    return LoopResult(step, wall, stopped, logs)


def cosine_decay(step: int, total: int, min_ratio: float) -> float:
    """The learning-rate factor ``step`` steps into a cosine decay from 1 to ``min_ratio`` over ``total`` steps
    (``min_ratio`` from then on)."""
    progress = min(1.0, step / max(1, total))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
