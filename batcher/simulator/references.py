"""The simulator's reference images: each reference URL of a submission judged as the API would,
and the store of uploaded images it serves at `/_sim/uploads/<name>`.

A submission's reference URLs are judged one by one, by the rules of batcher.references.facts:
- the simulator's own `/_sim/refs/<name>` or `/_sim/uploads/<name>` (on any host: in-process
  the base is https://pixeldojo.ai, served it is http://127.0.0.1:PORT): judged from its own
  bytes, without HTTP;
- on a reserved example host (example.com, *.test, localhost, ...): a placeholder, accepted
  without fetching (tests, demos and docs use them);
- any other URL: fetched with the simulator's fetch function (over HTTP by default when served;
  in-process there is none: the host cannot be reached, as on a machine offline).
The first one refused is named in the API's 400 answer by its index, its URL shortened and
without its query string (a presigned URL's signature), and why.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..models import ModelSpec
from ..references import MAX_BYTES, MIN_SIDE, image_kind, image_size, megabytes, reserved_host, too_big, too_small
from .images import reference_image

FETCH_TIMEOUT = 10.0
MAX_REDIRECTS = 5
URL_SHOWN = 80  # characters of a URL a refusal shows
UPLOAD_NAME = re.compile(r"[0-9a-f]{64}\.(jpg|png|webp)")
UPLOAD_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_OWN = re.compile(r"/_sim/(refs|uploads)/([^/]+)/?")


@dataclass(frozen=True)
class FetchedReference:
    """What a reference URL answered: status, Content-Type, body (at most MAX_BYTES + 1 bytes)
    and the whole size when the answer declared it."""

    status: int
    content_type: str
    data: bytes
    size: int | None = None


class Unreachable(Exception):
    """The reference's host cannot be reached (no such host, refused, timed out, not http(s))."""


FetchReference = Callable[[str], FetchedReference]


def fetch_over_http(url: str) -> FetchedReference:
    """GET `url` as the API's servers would: 10 s timeout, at most 5 redirects, http(s) only,
    reading at most MAX_BYTES + 1 bytes. Raises Unreachable when no answer comes."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise Unreachable("not an http or https URL")
    try:
        with httpx.Client(timeout=FETCH_TIMEOUT, follow_redirects=True, max_redirects=MAX_REDIRECTS) as client, \
                client.stream("GET", url) as response:
            data = bytearray()
            for block in response.iter_bytes():
                data += block
                if len(data) > MAX_BYTES:
                    break
            declared = response.headers.get("content-length", "")
            known = declared.isdigit() and "content-encoding" not in response.headers  # else: the encoded size
            return FetchedReference(response.status_code, response.headers.get("content-type", ""),
                                    bytes(data[:MAX_BYTES + 1]), int(declared) if known else None)
    except httpx.TooManyRedirects:
        raise Unreachable(f"more than {MAX_REDIRECTS} redirects") from None
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise Unreachable(type(e).__name__ + (f": {e}" if str(e) else "")) from None


def short_url(url: str) -> str:
    """`url` as a refusal shows it: no user info, query or fragment; cut in the middle when long."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    shown = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else parts.path
    if len(shown) > URL_SHOWN:
        shown = shown[:URL_SHOWN // 2 - 2] + "..." + shown[-(URL_SHOWN // 2 - 1):]
    return shown


def judge_image(answer: FetchedReference) -> str | None:
    """Why the API would refuse this answer as a reference image, or None."""
    if answer.status not in (200, 206):
        return f"HTTP {answer.status}"
    kind = image_kind(answer.data)
    if kind is None:
        served = answer.content_type.split(";")[0].strip().lower() or "no Content-Type"
        if not served.startswith("image/"):
            return f"not an image ({served})"
        return f"not an image (served as {served}, but its bytes are not JPEG, PNG or WEBP)"
    size = max(answer.size or 0, len(answer.data))
    if too_big(size):
        shown = megabytes(size) if answer.size is not None or size <= MAX_BYTES else f"more than {megabytes(MAX_BYTES)}"
        return f"{shown}, over the {MAX_BYTES >> 20} MB limit"
    sides = image_size(kind, answer.data)
    if sides is None:
        return f"a {kind} whose size in pixels cannot be read"
    if too_small(*sides):
        return f"{sides[0]}x{sides[1]}, shortest side under {MIN_SIDE} px"
    return None


class UploadStore:
    """Uploaded images by name (`<sha256>.<jpg|png|webp>`): in memory, or in `folder` (a
    journal's, so they outlive the process); thread-safe."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self._memory: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @staticmethod
    def check_name(name: str) -> str:
        if not isinstance(name, str) or not UPLOAD_NAME.fullmatch(name):
            raise ValueError(f"upload name {name!r} is not <64 lowercase hex>.<jpg|png|webp>")
        return name

    def put(self, name: str, data: bytes) -> None:
        self.check_name(name)
        folder = self.folder
        if folder is None:
            with self._lock:
                self._memory[name] = bytes(data)
            return
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temp, folder / name)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._memory.pop(name, None)  # the folder's copy is the newer

    def get(self, name: str) -> bytes | None:
        if not UPLOAD_NAME.fullmatch(name):
            return None
        with self._lock:
            found = self._memory.get(name)
        if found is not None or self.folder is None:
            return found
        try:
            return (self.folder / name).read_bytes()
        except OSError:
            return None

    def size(self, name: str) -> int | None:
        self.check_name(name)
        with self._lock:
            found = self._memory.get(name)
        if found is not None:
            return len(found)
        if self.folder is None:
            return None
        try:
            return (self.folder / name).stat().st_size
        except OSError:
            return None


def own_file(kind: str, name: str, uploads: UploadStore) -> tuple[int, bytes, str] | None:
    """What the simulator serves at `/_sim/<kind>/<name>`: (status, body, content type), or None (404)."""
    if kind == "refs":
        return reference_image(name)
    data = uploads.get(name)
    return None if data is None else (200, data, UPLOAD_TYPES[name.rsplit(".", 1)[-1]])


def static_file(found: tuple[int, bytes, str] | None, headers: Mapping[str, str], validators: bool = True
                ) -> tuple[int, bytes, dict[str, str]]:
    """A file as a static host serves it: ETag, Last-Modified, 304, byte ranges; 404 for None."""
    if found is None:
        return 404, b"Not Found", {"content-type": "text/plain"}
    status, body, kind = found
    tags = {"etag": f'"{hashlib.sha256(body).hexdigest()[:16]}"',
            "last-modified": "Mon, 01 Jan 2024 00:00:00 GMT"} if validators else {}
    if tags and headers.get("if-none-match") == tags["etag"]:
        return 304, b"", tags
    wanted = headers.get("range", "").removeprefix("bytes=").split("-")
    if len(wanted) == 2 and wanted[0].isdigit() and wanted[1].isdigit():
        first, last = int(wanted[0]), min(int(wanted[1]), len(body) - 1)
        return 206, body[first:last + 1], {"content-type": kind, **tags,
                                           "content-range": f"bytes {first}-{last}/{len(body)}"}
    return status, body, {"content-type": kind, **tags}


def reference_problem(url: str, uploads: UploadStore, fetch: FetchReference | None) -> tuple[str | None, bool]:
    """(why the API would refuse reference `url`, or None; whether it was fetched over the network)."""
    own = _OWN.fullmatch(urlsplit(url).path)
    if own is not None:  # first: a served simulator may well be reached as localhost
        found = own_file(own.group(1), own.group(2), uploads)
        status, body, kind = found if found is not None else (404, b"Not Found", "text/plain")
        return judge_image(FetchedReference(status, kind, body, len(body))), False
    if reserved_host(url):
        return None, False  # a placeholder: never fetched
    if fetch is None and _loopback(url):
        fetch = fetch_over_http  # a bucket on this machine (a local S3 server), as the API reaches yours
    if fetch is None:
        return "cannot be reached (the in-process simulator reaches no host but this machine)", False
    try:
        answer = fetch(url)
    except Exception as e:  # any failure to get an answer: DNS, refused, timeout, a fetch function's own
        return f"cannot be reached ({_without_secrets(str(e) or type(e).__name__, url)})", True
    return judge_image(answer), True


def _loopback(url: str) -> bool:
    """Whether `url` names this machine (127.0.0.0/8, ::1, localhost): the in-process simulator
    fetches from there (and from nowhere else: tests talk only to loopback)."""
    try:
        host = urlsplit(url).hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _without_secrets(text: str, url: str) -> str:
    """An error's text without the URL's query string (presigned URLs carry signatures)."""
    query = urlsplit(url).query
    return text.replace(url, short_url(url)).replace(query, "...") if query else text


def references_problem(wire: str, urls: list[Any], uploads: UploadStore, fetch: FetchReference | None
                       ) -> tuple[str | None, int]:
    """(`WIRE[i]: URL: why` for the first reference the API would refuse, or None; fetches made)."""
    fetched = 0
    for i, url in enumerate(urls):
        problem, over_network = reference_problem(str(url), uploads, fetch)
        fetched += over_network
        if problem is not None:
            return f"{wire}[{i}]: {short_url(str(url))}: {problem}", fetched
    return None, fetched


def submission_problem(spec: ModelSpec, body: dict[str, Any], uploads: UploadStore, fetch: FetchReference | None
                       ) -> tuple[str | None, int]:
    """(why the API would refuse a valid run `body` for its references, or None; fetches made):
    every URL-list parameter of the model is judged."""
    fetched = 0
    for param in spec.params:
        urls = body.get(param.wire)
        if param.kind == "url_list" and isinstance(urls, list):
            problem, made = references_problem(param.wire, urls, uploads, fetch)
            fetched += made
            if problem is not None:
                return problem, fetched
    return None, fetched
