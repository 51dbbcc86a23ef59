"""Reference images: the rules an image must meet, local files named in a manifest, and the
stores they are uploaded to.

    facts       the image rules (type, bytes, pixels) read from an image's own bytes
    local       local files, folders and globs; the reference store's settings
    store       reference stores (S3-compatible, the simulator's): each image uploaded once
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .facts import (
        HEAD_BYTES,
        MAX_BYTES,
        MIN_SIDE,
        image_kind,
        image_size,
        judge_image,
        megabytes,
        reserved_host,
        too_big,
        too_small,
    )
    from .local import (
        LOCAL_PREFIX,
        LocalFile,
        StoreSettings,
        is_local_address,
        local_addresses,
        looks_like_local,
        parse_lifetime,
        refuse_without_store,
        resolve_local,
        rule_view,
    )
    from .store import ReferenceStore, S3Store, SimulatedStore, object_name, placeholder_url, with_urls

__getattr__ = lazy(__name__)

__all__ = [
    "HEAD_BYTES",
    "LOCAL_PREFIX",
    "MAX_BYTES",
    "MIN_SIDE",
    "LocalFile",
    "ReferenceStore",
    "S3Store",
    "SimulatedStore",
    "StoreSettings",
    "image_kind",
    "image_size",
    "is_local_address",
    "judge_image",
    "local_addresses",
    "looks_like_local",
    "megabytes",
    "object_name",
    "parse_lifetime",
    "placeholder_url",
    "refuse_without_store",
    "reserved_host",
    "resolve_local",
    "rule_view",
    "too_big",
    "too_small",
    "with_urls",
]
