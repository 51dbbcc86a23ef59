"""Per-job webhook URLs: where the API is asked to poke a job's end, with a token that proves the
poke came through a URL this batch gave out.

PixelDojo accepts a `webhook_url` per job but publishes neither the payload nor a signature, so a
webhook is a *poke*, never the truth: it only makes the runner ask the API about the job at once.
A job's URL is `<public base>/<job key>/<token>`, the token an HMAC-SHA256 of the batch's secret
(kept in the ledger, so every runner of the batch can check any of its pokes) over the batch and
the key. Anyone can guess a key; nobody without the secret can make its token. Pure functions."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import UsageError
from ..models import ModelSpec

TOKEN_HEX = 32  # 128 bits of the HMAC: unguessable, short enough for any URL
_KEY = re.compile(r"[0-9a-f]{20}")  # a job key (plan.keys.KEY_BYTES * 2 hex digits)
_TOKEN = re.compile(rf"[0-9a-f]{{{TOKEN_HEX}}}")
MAX_BASE_LENGTH = 1500  # the base, the key and the token stay under the 2048 URLs are held to
WIRE_NAMES = ("webhook_url", "webhookUrl")  # what a model's live schema may call the field
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_PORT = re.compile(r"[0-9]{1,5}")
_EXAMPLE = "write HOST:PORT, e.g. 127.0.0.1:8787 or [::1]:8787"


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:8787'; port 0 = any free port) -> (host, port); UsageError with
    one clear line otherwise."""
    shown = repr(text[:80])

    def refuse(why: str) -> UsageError:
        return UsageError(f"listen address {shown}: {why} ({_EXAMPLE})")

    stripped = text.strip()
    if stripped.startswith("["):
        host, closed, rest = stripped[1:].partition("]")
        if not closed:
            raise refuse("no closing ']'")
        if not rest.startswith(":"):
            raise refuse("no port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise refuse(f"{host[:60]!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = stripped.rpartition(":")
        if not colon:
            raise refuse("no port")
        if ":" in host:
            raise refuse("an IPv6 address goes in brackets")
        if not host:
            raise refuse("no host")
        if not _HOST.fullmatch(host):
            raise refuse("the host is not a host name or an IP address")
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise refuse("the port must be a number from 0 to 65535")
    return host, int(port_text)


def format_listen(host: str, port: int) -> str:
    """(host, port) -> 'HOST:PORT', IPv6 in brackets: the address as parse_listen reads it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Webhooks:
    """How a run asks for webhooks: the public base URL the API posts to (None: the listen address
    itself, for an API on this host such as the simulator) and where batcher listens."""

    listen_host: str
    listen_port: int
    public_url: str | None = None

    def base(self, bound_port: int) -> str:
        """The base of every job's URL, once the listener knows its port (port 0 picks one)."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        return f"http://{format_listen(self.listen_host, bound_port)}/hooks"


def webhooks_for(host: str, port: int, public_url: str | None, api_base: str | None) -> Webhooks:
    """`--webhook-listen` (as host and port) and `--webhook-url`, checked. Without a public URL the
    listen address is the base of every job's URL, which only an API on this host can reach
    (`api_base` None: the simulator), and not one listening on every interface."""
    if public_url is None and (host in ("0.0.0.0", "::") or not _on_this_host(api_base)):
        raise UsageError(f"--webhook-listen {format_listen(host, port)} needs --webhook-url: the public URL "
                         f"through which the API at {api_base or 'this host'} reaches this listener (a reverse proxy "
                         "or a tunnel)")
    return Webhooks(host, port, check_public_url(public_url) if public_url is not None else None)


def _on_this_host(api_base: str | None) -> bool:
    """Whether the API is the simulator or one on a loopback address."""
    if api_base is None:
        return True
    host = (urlsplit(api_base).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def make_secret() -> str:
    """A new batch secret: 256 random bits, as hex."""
    return secrets.token_hex(32)


def token_for(secret: str, batch: str, key: str) -> str:
    """The token of one job's URL."""
    message = f"{batch}\x00{key}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:TOKEN_HEX]


def job_url(base: str, secret: str, batch: str, key: str) -> str:
    """The URL the API is asked to post to when the job ends."""
    return f"{base.rstrip('/')}/{key}/{token_for(secret, batch, key)}"


def key_of(path: str, secret: str, batch: str) -> str | None:
    """The job key a poke's path names, if its token is the batch's; else None. Only the last two
    segments count, so a reverse proxy may keep or strip any prefix of the public URL."""
    parts = path.rstrip("/").rsplit("/", 2)
    if len(parts) < 3:
        return None
    key, token = parts[1], parts[2]
    if not _KEY.fullmatch(key) or not _TOKEN.fullmatch(token):
        return None
    return key if hmac.compare_digest(token, token_for(secret, batch, key)) else None


def check_public_url(text: str) -> str:
    """`--webhook-url` as given, checked: an absolute http(s) URL without credentials, query or
    fragment (the job's key and token are appended as path segments)."""
    if len(text) > MAX_BASE_LENGTH:
        raise UsageError(f"--webhook-url is {len(text)} characters long; at most {MAX_BASE_LENGTH}")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  # (reading it checks it: a port that is no number raises)
    except ValueError as e:
        raise UsageError(f"--webhook-url {text!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--webhook-url {text!r} must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise UsageError("--webhook-url must not carry credentials: the API would keep them with every job")
    if parts.query or parts.fragment:
        raise UsageError(f"--webhook-url {text!r} must have no query or fragment: each job's key and token "
                         f"are added as path segments")
    if any(ord(c) < 33 or ord(c) == 127 for c in text):
        raise UsageError("--webhook-url must not contain spaces or control characters")
    return text


def webhook_field(model: ModelSpec) -> str:
    """Where a submission carries its webhook URL: the name the model's live schema gives the field
    when it lists one, else `webhook_url` beside the parameters (as PixelDojo's SDK sends it)."""
    for p in model.params:
        if p.wire in WIRE_NAMES:
            return p.wire
    return WIRE_NAMES[0]
