"""Evaluation of editors on the world benchmark."""
