"""Pretraining of the shapes world's models: the evaluator, the judge and the text-to-image teacher."""
