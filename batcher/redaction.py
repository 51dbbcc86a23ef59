"""Finding secrets in foreign text however it hides them, and redacting them: one rule for the
API's answers and the reference store's errors alike.

A text is matched after it is normalised: JSON escapes (`\\u0070`, `\\/`, `\\\\`) undone,
percent-escapes (either hex case, any subset of characters, any depth: `%2570` is `p`) undone,
HTML character references (`&#112;`, `&#x70;`: error pages) undone, ASCII case folded. Each
normalised character remembers the span of the original text it came from, so what is redacted
is the original's span, whatever encoded it. Decoding works on a stack as the text is read (an
escape that decodes into the start of another is decoded again), so the work is linear in the
text, never a pass per level of encoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

REDACTED = "[redacted]"
_HEX = frozenset("0123456789abcdefABCDEF")
# JSON's one-letter escapes; `/` and `\` included, so `\/` and `\\` reduce to their character.
_SIMPLE = {"/": "/", "\\": "\\", '"': '"', "'": "'", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# What makes a presigned URL a capability (its signature, credential and session token), found in
# normalised text: as sent, percent-encoded at any depth, or JSON-escaped.
_SIGNED = "|".join(rf"(?<=x-amz-{name}=)" for name in ("signature", "credential", "security-token"))
_SIGNED_VALUE = rf"(?:{_SIGNED})[^&\s\"'<>]+"
# An HTML character reference at the end of the text read so far (`&#112;`, `&#x70;`).
_ENTITY = re.compile(r"&#(?:([0-9]{1,7})|[xX]([0-9a-fA-F]{1,6}));\Z")
_BYTE_BASE = 0xDC00  # a byte >= 0x80 is the lone surrogate U+DC80..U+DCFF, as Python's surrogateescape has it


def _bytes_of(char: str) -> str:
    """A character as the normalised text holds it: ASCII as itself, anything else as its UTF-8
    bytes (so a percent-encoded UTF-8 sequence and the raw character normalise alike)."""
    if char < "\x80":
        return char
    return "".join(chr(_BYTE_BASE + b) for b in char.encode("utf-8", "surrogatepass"))


def _byte_char(byte: int) -> str:
    return chr(byte) if byte < 0x80 else chr(_BYTE_BASE + byte)


def normalise(text: str) -> tuple[str, list[int], list[int]]:
    """(normalised text, start, end): the text decoded and ASCII-lowercased, and for each of its
    characters the span [start, end) of `text` it came from."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []

    def replace(n: int, value: str) -> None:
        start, end = starts[-n], ends[-1]
        del chars[-n:], starts[-n:], ends[-n:]
        for c in value:
            chars.append(c)
            starts.append(start)
            ends.append(end)

    for i, char in enumerate(text):
        for c in _bytes_of(char):
            chars.append(c)
            starts.append(i)
            ends.append(i + 1)
        # Reduce while the tail is an escape: what one decodes to may complete another.
        while True:
            n = len(chars)
            if n >= 3 and chars[-3] == "%" and chars[-2] in _HEX and chars[-1] in _HEX:
                replace(3, _byte_char(int(chars[-2] + chars[-1], 16)))
            elif (n >= 6 and chars[-6] == "\\" and chars[-5] in "uU"
                  and all(c in _HEX for c in chars[-4:])):
                replace(6, _bytes_of(chr(int("".join(chars[-4:]), 16))))
            elif n >= 2 and chars[-2] == "\\" and chars[-1] in _SIMPLE:
                replace(2, _SIMPLE[chars[-1]])
            elif chars[-1] == ";" and (entity := _ENTITY.search("".join(chars[-10:]))) is not None \
                    and (code := int(entity[1] or entity[2], 10 if entity[1] else 16)) <= 0x10FFFF:
                replace(len(entity[0]), _bytes_of(chr(code)))
            else:
                break
    return "".join(chars).lower(), starts, ends


def _plain(text: str) -> bool:
    """Whether `text` has no escape `normalise` would undo (then it is matched as it is, fast)."""
    return "%" not in text and "\\" not in text and "&#" not in text


@dataclass(frozen=True)
class Secrets:
    """Secrets to find in text: `search` says whether a text holds one, `redact` replaces each
    (and a `Bearer ` before it), and a presigned URL's signature, credential and session token,
    with [redacted], in any encoding `normalise` undoes."""

    plain: re.Pattern[str]  # the secrets as they are, any case: texts with no escape at all
    decoded: re.Pattern[str]  # the normalised secrets, in normalised text
    hiding: re.Pattern[str]  # what `redact` removes from normalised text: `decoded` and signatures

    @classmethod
    def of(cls, secrets: Iterable[str]) -> Secrets | None:
        found = sorted({s for s in secrets if s}, key=len, reverse=True)
        if not found:
            return None
        plain = "|".join(re.escape(s) for s in found)
        decoded = rf"(?:bearer(?:\s+|\+))?(?:{'|'.join(re.escape(normalise(s)[0]) for s in found)})"
        return cls(re.compile(rf"(?:bearer(?:\s+|\+))?(?:{plain})", re.IGNORECASE), re.compile(decoded),
                   re.compile(rf"{decoded}|{_SIGNED_VALUE}"))

    def search(self, text: str) -> bool:
        """Whether `text` holds a secret, in any encoding."""
        if _plain(text):
            return self.plain.search(text) is not None
        return self.decoded.search(normalise(text)[0]) is not None

    def redact(self, text: str) -> str:
        """`text` with every secret's span (in any encoding) replaced by [redacted]."""
        if _plain(text):
            return self.plain.sub(REDACTED, text)
        flat, starts, ends = normalise(text)
        spans: list[list[int]] = []
        for m in self.hiding.finditer(flat):
            if m.end() == m.start():
                continue
            start, end = starts[m.start()], ends[m.end() - 1]
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)  # two matches in one multi-byte character
            else:
                spans.append([start, end])
        if not spans:
            return text
        out: list[str] = []
        at = 0
        for start, end in spans:
            out += [text[at:start], REDACTED]
            at = end
        out.append(text[at:])
        return "".join(out)
