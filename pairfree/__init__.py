"""pairfree: train a few-step image-editing diffusion model without image-editing pairs."""

__version__ = "0.1.0"
