"""pairfree: train a few-step image-editing diffusion model without image-editing pairs."""

__version__ = "0.1.0"


def pretrained(name: str, path=None):
    """The shipped shapes-world models: "shapes-teacher", "shapes-judge" or "shapes-evaluator" (no network)."""
    from pairfree.shipped import pretrained as _load

    return _load(name, path)
