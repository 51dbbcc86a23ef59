"""Review of issue 23 (finding 11): redaction undoes every HTML character reference the README
says it does, as a browser reads them (any number of leading zeros, the `;` left out, HTML5 named
references) and `%uXXXX`; a key shown plainly is found even where decoding would start an escape
on it; the work stays linear in the text (counted in lines run, not timed)."""
from __future__ import annotations

import html
import re
import sys
from collections.abc import Callable
from html.entities import html5
from types import FrameType
from typing import Any
from urllib.parse import unquote

import pytest

import batcher.redaction
from batcher.redaction import Secrets, normalise

KEYS = ["pd_live_Ab12", "pd_" + "x9Y" * 20, "PD-k3y!/+=_" + "q" * 30]
# Each character's HTML5 name with its `;` (the first the table has), for the named forms.
NAMES = {value: name for name, value in sorted(html5.items(), reverse=True) if name.endswith(";") and len(value) == 1}


def decodes_to(secret: str, text: str) -> bool:
    """Whether `text` holds `secret` once decoded as a browser or a lenient reader would: HTML
    references (Python's html.unescape: any length, no `;`, named), `%uXXXX`, percent-escapes.
    Written apart from batcher's decoder, so the test does not trust what it tests."""
    for _ in range(4):
        text = re.sub(r"%[uU]([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text)
        text = html.unescape(unquote(text))
    return secret.lower() in text.lower()


def forms(key: str) -> dict[str, str]:
    """The key as an answer may hide it, each decodable to it."""
    return {
        "decimal, 8 digits": "".join(f"&#{ord(c):08d};" for c in key),
        "hex, 7 digits": "".join(f"&#x{ord(c):07x};" for c in key),
        "hex, leading zeros by the hundred": "".join(f"&#X{'0' * 100}{ord(c):X};" for c in key),
        "decimal, no semicolon": "".join(f"&#{ord(c)}" for c in key),
        "decimal, no semicolon, then a letter": f"&#{ord(key[0])}{key[1:]}",
        "named, with semicolons": "".join(f"&{NAMES[c]}" if c in NAMES and not c.isalnum() else c for c in key),
        "named, every character": "".join(f"&{NAMES[c]}" if c in NAMES else c for c in key),
        "named, legacy, no semicolon": f"&amp{key}&amp",
        "%u, lower hex": "".join(f"%u{ord(c):04x}" for c in key),
        "%U, upper hex, by turns": "".join(f"%U{ord(c):04X}" if i % 2 else c for i, c in enumerate(key)),
        "a reference's semicolon percent-encoded": "".join(f"&#{ord(c)}%3B" for c in key),
        "a digit of a reference percent-encoded": "".join(f"&#{ord(c) // 10}%3{ord(c) % 10};" for c in key),
    }


@pytest.mark.parametrize("key", KEYS, ids=lambda k: f"{len(k)}-chars")
def test_every_html_reference_and_percent_u_form_is_redacted_exactly(key):
    secrets = Secrets.of([key])
    assert secrets is not None
    for name, form in forms(key).items():
        assert decodes_to(key, form), f"the test's own form {name} is wrong"
        text = f"err: {form} end"
        shown = secrets.redact(text)
        assert not decodes_to(key, shown), f"{name}: {shown!r}"
        assert shown.startswith("err: ") and shown.endswith(" end") and "[redacted]" in shown, name
        assert secrets.search(text), name


def test_a_reference_at_the_very_end_without_its_semicolon_is_decoded():
    key = "pd_live_Ab12"
    secrets = Secrets.of([key])
    assert secrets is not None
    for tail in ("".join(f"&#{ord(c)}" for c in key), "".join(f"&#x{ord(c):x}" for c in key)):
        assert secrets.redact(f"token {tail}") == "token [redacted]"


def test_a_plain_key_is_found_where_decoding_would_eat_its_first_characters():
    # `100%` before a key starting with two hex digits, `&` before one starting with a legacy
    # name, `&#` before one starting with digits: the decoder takes them for escapes.
    for key, before in (("deadbeef-0123456789", "100%"), ("notAkey_0123456789", "a=1&"),
                        ("1234abcdef_key", "x&#"), ("u00a9key_0123456789", "\\")):
        secrets = Secrets.of([key])
        assert secrets is not None
        assert secrets.redact(f"{before}{key} end") == f"{before}[redacted] end", key
        assert secrets.search(f"{before}{key}")


def test_text_with_no_secret_is_left_exactly_as_it_is():
    secrets = Secrets.of(["pd_live_Ab12"])
    assert secrets is not None
    for text in ("a &amp; b &lt;tag&gt; &#112;&#x64; 100% %u0041 &notit; &copy2024 &", "&#99999999; &#x110000;"):
        assert secrets.redact(text) == text


def test_references_decode_as_a_browser_reads_them():
    for text, decoded in (("&#0000112;", "p"), ("&#x0000070;", "p"), ("&#112q", "pq"), ("&#x70 ", "p "),
                          ("&lowbar;", "_"), ("&amp;lt;", "<"), ("&notit;", "\udcc2\udcacit;"),
                          ("%u0070%U0041", "pa"), ("&#112%7&#48 ", "pp "), ("&#11%32;", "p"), ("&#112", "p")):
        assert normalise(text)[0] == decoded, text


def _lines_run(fn: Callable[[], Any]) -> int:
    """How many lines of batcher/redaction.py `fn` runs: a count of work, not a time."""
    count = 0
    target = batcher.redaction.__file__

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if frame.f_code.co_filename != target:
            return None
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("unit", ["&#0", "&#x0", "&", "&#", "&lowbar", "%u", "&#1", "%25", "\\", "&#112%7",
                                  "&notit", "&amp;", "&a" + "b" * 40, "&#112%3B", "%&#", "&#11%3"])
def test_the_work_grows_linearly_with_the_text(unit):
    # However a hostile text nests or repeats escapes, the lines run per character stay bounded:
    # four times the text, at most about four times the work.
    secrets = Secrets.of(["pd_live_Ab12"])
    assert secrets is not None
    small, large = unit * 200, unit * 800
    n_small = _lines_run(lambda: secrets.redact(small + " pd_live_Ab12"))
    n_large = _lines_run(lambda: secrets.redact(large + " pd_live_Ab12"))
    assert n_large <= 4.4 * n_small and n_large <= 400 * len(large)


def test_a_session_token_refreshed_mid_run_is_redacted_from_the_stores_errors():
    # Review of issue 23, finding 12: the store's credentials were frozen when it was made; boto3
    # refreshes a session token during a long run, and a store echoing the new one showed it.
    boto3 = pytest.importorskip("boto3")
    import datetime

    import anyio
    import botocore.session
    from botocore.credentials import RefreshableCredentials
    from botocore.stub import Stubber

    from batcher.errors import ReferenceStoreError
    from batcher.references.local import StoreSettings
    from batcher.references.store import S3Store
    generation = [0]

    def token() -> str:
        return f"FwoGZXIvYXdzSessionTokenGeneration{generation[0]}x0123456789"

    def refresh() -> dict[str, str]:
        # within botocore's advisory window: every use of the credentials asks for them again
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=12)
        return {"access_key": "AKIAREFRESHED0123456", "secret_key": "refreshed/Secret+0123456789abcdef",
                "token": token(), "expiry_time": expiry.isoformat()}

    core = botocore.session.get_session()
    core._credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")
    client = boto3.session.Session(botocore_session=core, region_name="us-east-1").client("s3")
    store = S3Store(StoreSettings.of("s3://bucket-x/p"), client=client)
    first = token()
    generation[0] = 1  # the session token is refreshed after the store was made
    stubber = Stubber(client)
    for echoed in (token(), first):
        stubber.add_client_error("head_object", service_error_code=echoed, http_status_code=500)
    with stubber:
        for echoed in (token(), first):
            with pytest.raises(ReferenceStoreError) as caught:
                anyio.run(lambda: store.holds("a.png", 3, "ab"))
            assert "HTTP 500 [redacted]" in str(caught.value) and echoed not in str(caught.value)
    assert token() in store.secrets and first in store.secrets
