"""A row's references as a job sends them: set names expanded, URLs checked, local files,
folders and globs resolved to their images' content addresses (see `references.local`)."""

from __future__ import annotations

from ..manifest import Diagnostics, Located, Manifest, as_list, looks_like_local_file, suggest
from ..models import check_url
from ..references import resolve_local
from ..text import short


def _is_local(spec: str, manifest: Manifest) -> bool:
    """Whether a reference that is no set name names local images: it reads as a path, or names
    a file or folder beside the manifest."""
    if "://" in spec:
        return spec.lower().startswith("file:")
    try:
        return looks_like_local_file(spec) or (manifest.base / spec).exists()
    except (OSError, ValueError):
        return False


def resolve_references(loc: Located, manifest: Manifest, diags: Diagnostics) -> list[str] | None:
    """A row's references as URLs and local images' content addresses, in order, duplicates
    removed; None (every problem reported) when one cannot be resolved."""
    specs = as_list(loc) if isinstance(loc.value, list) else [loc]
    urls: list[str] = []
    ok = True
    for item in specs:
        spec = item.value
        if isinstance(spec, list):
            nested = resolve_references(item, manifest, diags)
            ok = ok and nested is not None
            urls.extend(nested or [])
        elif not isinstance(spec, str) or not spec.strip():
            diags.add(loc.file, loc.line, f"a reference must be a set name, an image URL or a local image, "
                      f"got {short(spec)}")
            ok = False
        elif spec in manifest.reference_sets:
            values = manifest.reference_sets[spec].value
            urls.extend(values)
            for value in values:
                if isinstance(value, str) and value in manifest.set_files:
                    manifest.local_files.setdefault(value, manifest.set_files[value])
                elif check_url(value):
                    ok = False  # reported where the set is written: once is enough
        elif _is_local(spec, manifest):
            files, problems = resolve_local(spec, manifest.base, f"{item.file}:{item.line}")
            for problem in problems:
                diags.add(item.file, item.line, problem)
            ok = ok and not problems
            for f in files:
                manifest.local_files.setdefault(f.address, f)
                urls.append(f.address)
        elif "://" in spec:
            urls.append(spec)  # checked with the parameter's rule below
        else:
            diags.add(loc.file, loc.line,
                      f"unknown reference set {short(spec)}{suggest(spec, list(manifest.reference_sets))}")
            ok = False
    if not ok:
        return None
    return list(dict.fromkeys(urls))
