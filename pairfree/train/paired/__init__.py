"""The supervised yardstick: the editor's generator, copy warm-up, data and budget, but stage 1 trained with the
flow loss toward the *ground-truth edited image* — the pairs the pair-free method never sees.

Not the method. It answers a question the pair-free numbers alone cannot: how many steps does this generator need
to learn edits when it is told the answer? A pair-free run cannot be expected to edit sooner than that.

    python -m pairfree.train.paired --config configs/shapes/editor.yaml [--resume] [--set steps=3000 ...]

Writes the same run directory as ``pairfree train`` (``model/`` evaluates with ``pairfree eval``); its
``model/train.json`` says ``"trainer": "paired"``.
"""

from __future__ import annotations

from pairfree.config import ConfigError
from pairfree.flow import few_step_schedule
from pairfree.train.losses import flow_loss
from pairfree.train.trainer import EditorTrainer


class PairedTrainer(EditorTrainer):
    """:class:`EditorTrainer` whose stage 1 is supervised: flow loss toward the rendered target edit,
    conditioned on the input's tokens and the instruction (stage 0, the copy warm-up, is unchanged), at the
    few-step sampler's timesteps — the only ones the editor is ever run at (a logit-normal t puts ~3 % of the
    samples at t ≥ 0.67 where the K = 4, shift 6 schedule lives; docs/experiments/lite-world.md)."""

    TRAINER = "paired"  # supervised toward ground-truth edits: a yardstick, not the pair-free editor

    def __init__(self, cfg, models, **kw):
        if cfg.data.source != "world":
            raise ConfigError("data.source: the supervised yardstick needs the shapes world's targets (source: world)")
        super().__init__(cfg, models, **kw)

    def edit_step(self, step: int) -> dict:
        b = self.cfg.batch
        edits = [self.data.example(self.data.global_index(j))[0] for j in range(step * b, (step + 1) * b)]
        source = self.encode(self.data.render([e.source for e in edits]))
        target = self.encode(self.data.render([e.target for e in edits]))
        with self.autocast():
            loss = flow_loss(
                self.gen.module,
                target,
                self.conditioning([e.instruction for e in edits], step),
                self.generators(step),
                reference=source,
                t_values=few_step_schedule(self.cfg.sampler.steps, self.cfg.sampler.shift),
            )
        return self.update(loss, {"paired": loss.item()})
