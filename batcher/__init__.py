"""batcher: render large batches of reference-to-video clips through PixelDojo's API, safely."""

__version__ = "0.1.0"
