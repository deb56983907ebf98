"""The judge: a frozen VLM answering Yes/No about edits, differentiable with respect to the images."""

from pairfree.judge.qwen import JudgeConfig, QwenJudge, images_to_patches, two_token_loss

__all__ = ["JudgeConfig", "QwenJudge", "images_to_patches", "two_token_loss"]
