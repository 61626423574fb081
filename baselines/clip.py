"""CLIP: symmetric InfoNCE over uniform in-batch negatives, learnable temperature."""
from bacl.method import Method


class CLIP(Method):
    """The base method is exactly CLIP; this name is what sweeps and tables show."""
