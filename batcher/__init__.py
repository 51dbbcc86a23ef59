"""batcher: render large batches of reference-to-video clips through PixelDojo's API, safely."""

__version__ = "0.1.0"

import logging as _logging

# A library stays quiet unless the application configures logging.
_logging.getLogger("batcher").addHandler(_logging.NullHandler())
