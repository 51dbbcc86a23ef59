"""The manifest's stores: `reference_store:` (where local reference images are uploaded) and
`outputs:` (the output store a run writes its clips to), each checked with FILE:LINE problems."""

from __future__ import annotations

from ..errors import UsageError
from ..references import StoreSettings
from ..text import short, type_name
from .diagnostics import Diagnostics, suggest
from .yamlfile import LineDict, key_line, value_line

STORE_FIELDS = ("url", "endpoint", "public_url", "url_lifetime")


def reference_store_of(doc: LineDict, display: str, diags: Diagnostics) -> StoreSettings | None:
    """`reference_store: s3://bucket/prefix`, or a mapping of url, endpoint, public_url, url_lifetime."""
    if doc.get("reference_store") is None:
        return None
    raw, line = doc["reference_store"], value_line(doc, "reference_store", 1)
    if isinstance(raw, str):
        raw = {"url": raw}
    if not isinstance(raw, dict):
        diags.add(display, line, f"reference_store must be an s3://BUCKET/PREFIX address or a mapping of "
                                 f"{', '.join(STORE_FIELDS)}, not {type_name(raw)}")
        return None
    for key in raw:
        if key not in STORE_FIELDS:
            diags.add(display, key_line(raw, key, line),
                      f"unknown reference_store field {short(key)}{suggest(key, STORE_FIELDS)}")
    values = {k: raw.get(k) for k in STORE_FIELDS}
    for key, value in values.items():
        numeric = key == "url_lifetime" and isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not isinstance(value, str) and not numeric:
            diags.add(display, value_line(raw, key, line),
                      f"reference_store {key} must be text, not {type_name(value)}")
            return None
    if not isinstance(values["url"], str):
        diags.add(display, line, "reference_store needs a url: s3://BUCKET/PREFIX")
        return None
    try:
        return StoreSettings.of(values["url"], values["endpoint"], values["public_url"], values["url_lifetime"])
    except UsageError as e:
        diags.add(display, line, str(e))
        return None


def outputs_of(doc: LineDict, display: str, diags: Diagnostics) -> str | None:
    """`outputs: s3://bucket/prefix`: the output store the batch's clips go to (`run --out`
    overrides it; a local folder is given with --out)."""
    raw = doc.get("outputs")
    if raw is None:
        return None
    line = value_line(doc, "outputs", 1)
    if not isinstance(raw, str) or not raw.strip().startswith("s3://"):
        shown = short(raw) if isinstance(raw, str) else type_name(raw)
        diags.add(display, line, f"outputs must be an s3://BUCKET/PREFIX address, not {shown} "
                                 "(a local folder is given with `batcher run --out FOLDER`)")
        return None
    try:
        StoreSettings.of(raw, what="outputs")
    except UsageError as e:
        diags.add(display, line, str(e))
        return None
    return raw.strip()
