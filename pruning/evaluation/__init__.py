"""Evaluation: perplexity (this package), zero-shot, speed and size."""
from .perplexity import perplexity

__all__ = ["perplexity"]
