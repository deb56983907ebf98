"""Pair-free editor training: ``pairfree train --config ...`` or ``deepspeed --module pairfree.train --config ...``."""

from pairfree.train.config import TrainConfig

__all__ = ["TrainConfig"]
