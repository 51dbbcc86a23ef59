"""Object storage the user owns: one S3-compatible bucket client (boto3) for the reference store
and the output store alike, with one rule for credentials (from the environment, never stored,
redacted from every text the store brings back) and one mapping of its failures.

    s3      Bucket: HEAD, PUT, streamed multipart uploads (atomic: a temporary key copied into
            place once whole), listings, presigned URLs, downloads, clean-up of dead uploads
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .s3 import Bucket, ObjectFacts

__getattr__ = lazy(__name__)

__all__ = ["Bucket", "ObjectFacts"]
