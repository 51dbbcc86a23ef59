"""Finding secrets in foreign text however it hides them, and redacting them: one rule for the
API's answers and the reference store's errors alike.

A text is matched as it is and after it is normalised: JSON escapes (`\\u0070`, `\\/`, `\\\\`)
undone, percent-escapes (either hex case, any subset of characters, any depth: `%2570` is `p`;
and `%u0070`) undone, HTML character references undone as a browser reads them (`&#112;`,
`&#x70;`, any number of leading zeros, the `;` left out, and every HTML5 named reference:
`&lowbar;`, `&amp`), ASCII case folded. Each normalised character remembers the span of the
original text it came from, so what is redacted is the original's span, whatever encoded it.
Decoding works on a stack as the text is read (an escape that decodes into the start of another
is decoded again); every decoding shrinks the stack and looks back a bounded number of
characters, so the work is linear in the text, never a pass per level of encoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from html.entities import html5

REDACTED = "[redacted]"
_HEX = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")
# JSON's one-letter escapes; `/` and `\` included, so `\/` and `\\` reduce to their character.
_SIMPLE = {"/": "/", "\\": "\\", '"': '"', "'": "'", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# What makes a presigned URL a capability (its signature, credential and session token), found in
# normalised text: as sent, percent-encoded at any depth, or JSON-escaped.
_SIGNED = "|".join(rf"(?<=x-amz-{name}=)" for name in ("signature", "credential", "security-token"))
_SIGNED_VALUE = rf"(?:{_SIGNED})[^&\s\"'<>]+"
# An HTML character reference at its start (leading zeros are dropped as they are read, so a
# number that is a character has at most 7 decimal or 6 hex digits; a name at most 32 letters).
_REFERENCE = re.compile(r"&(?:#([0-9]{1,7})|#[xX]([0-9a-fA-F]{1,6})|([A-Za-z][A-Za-z0-9]{0,31}))")
# The legacy names HTML reads without their `;` ("amp", "lt", "copy"), longest first.
_LEGACY = sorted((name for name in html5 if not name.endswith(";")), key=len, reverse=True)
# What may follow a reference's digits or name and still become its end: an escape being read.
_LIVE = re.compile(r"%(?:[0-9a-fA-F]|[uU][0-9a-fA-F]{0,3})?|\\(?:[uU][0-9a-fA-F]{0,3})?")
_WINDOW = 40  # `&`, a 32-letter name, and the longest live escape and one character after it
_BYTE_BASE = 0xDC00  # a byte >= 0x80 is the lone surrogate U+DC80..U+DCFF, as Python's surrogateescape has it


def _bytes_of(char: str) -> str:
    """A character as the normalised text holds it: ASCII as itself, anything else as its UTF-8
    bytes (so a percent-encoded UTF-8 sequence and the raw character normalise alike)."""
    if char < "\x80":
        return char
    return "".join(chr(_BYTE_BASE + b) for b in char.encode("utf-8", "surrogatepass"))


def _byte_char(byte: int) -> str:
    return chr(byte) if byte < 0x80 else chr(_BYTE_BASE + byte)


class _Stack:
    """The normalised text as it is read: characters, and the span of the original each came from."""

    def __init__(self) -> None:
        self.chars: list[str] = []
        self.starts: list[int] = []
        self.ends: list[int] = []

    def push(self, char: str, at: int) -> None:
        for c in _bytes_of(char):
            self.chars.append(c)
            self.starts.append(at)
            self.ends.append(at + 1)

    def replace(self, i: int, j: int, flat: str) -> None:
        """chars[i:j] become `flat` (normalised characters), each spanning all that they came from."""
        start, end = self.starts[i], self.ends[j - 1]
        self.chars[i:j] = flat
        self.starts[i:j] = [start] * len(flat)
        self.ends[i:j] = [end] * len(flat)

    def reduce(self, final: bool = False) -> None:
        """Decode while the tail is an escape: what one decodes to may complete another."""
        while self._step(final):
            pass

    def _step(self, final: bool) -> bool:
        chars, n = self.chars, len(self.chars)
        if n >= 3 and chars[-3] == "%" and chars[-2] in _HEX and chars[-1] in _HEX:
            self.replace(n - 3, n, _byte_char(int(chars[-2] + chars[-1], 16)))
        elif (n >= 6 and chars[-6] in "%\\" and chars[-5] in "uU"
              and all(c in _HEX for c in chars[-4:])):
            self.replace(n - 6, n, _bytes_of(chr(int("".join(chars[-4:]), 16))))
        elif n >= 2 and chars[-2] == "\\" and chars[-1] in _SIMPLE:
            self.replace(n - 2, n, _SIMPLE[chars[-1]])
        elif n >= 4 and chars[-2] == "0" and (
                (chars[-4:-2] == ["&", "#"] and chars[-1] in _DIGITS)
                or (n >= 5 and chars[-5:-3] == ["&", "#"] and chars[-3] in "xX" and chars[-1] in _HEX)):
            # a leading zero of a character reference: dropped (its span stays inside the reference's)
            del chars[-2], self.starts[-2], self.ends[-2]
        elif (found := self._reference(final)) is not None:
            self._decode_reference(*found)
        else:
            return False
        return True

    def _decode_reference(self, i: int, j: int, value: str) -> None:
        """chars[i:j], a reference, become `value`; what followed it (at most a name's length) is
        read again after it, as the character it decodes to may complete an escape before them."""
        after = self.chars[j:], self.starts[j:], self.ends[j:]
        del self.chars[j:], self.starts[j:], self.ends[j:]
        self.replace(i, j, "".join(_bytes_of(c) for c in value))
        self.reduce()
        for c, start, end in zip(*after, strict=True):
            self.chars.append(c)
            self.starts.append(start)
            self.ends.append(end)
            self.reduce()

    def _reference(self, final: bool) -> tuple[int, int, str] | None:
        """The HTML character reference that the last character read ended, as (i, j, its text),
        or at the end of the text (`final`), the one it ends with."""
        window = self.chars[-_WINDOW:] if final else self.chars[-_WINDOW:-1]
        if "&" not in window:
            return None
        seg = "".join(window)
        amp = seg.rfind("&")
        seg = seg[amp:] if final else seg[amp:] + self.chars[-1]
        found = _REFERENCE.match(seg)
        if found is None:
            return None
        rest = seg[found.end():]
        if rest and _LIVE.fullmatch(rest) and not final:
            return None  # an escape is being read after it: it may decode to its `;` or another digit
        i = len(self.chars) - len(seg)
        if found[3] is None:
            code = int(found[1], 10) if found[1] is not None else int(found[2], 16)
            if rest[:1] in (_DIGITS if found[1] is not None else _HEX) or code > 0x10FFFF:
                return None  # too many digits to be a character
            if not rest and not final:
                return None
            return i, i + found.end() + rest.startswith(";"), chr(code)
        name = found[3]
        if rest.startswith(";") and name + ";" in html5:
            return i, i + found.end() + 1, html5[name + ";"]
        if not rest and not final and len(name) < 32:
            return None  # the name is still being read
        legacy = next((k for k in _LEGACY if name.startswith(k)), None)
        return None if legacy is None else (i, i + 1 + len(legacy), html5[legacy])


def normalise(text: str) -> tuple[str, list[int], list[int]]:
    """(normalised text, start, end): the text decoded and ASCII-lowercased, and for each of its
    characters the span [start, end) of `text` it came from."""
    stack = _Stack()
    for i, char in enumerate(text):
        stack.push(char, i)
        stack.reduce()
    stack.reduce(final=True)
    return "".join(stack.chars).lower(), stack.starts, stack.ends


def _plain(text: str) -> bool:
    """Whether `text` has no escape `normalise` would undo (then it is matched as it is, fast)."""
    return "%" not in text and "\\" not in text and "&" not in text


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
        if self.plain.search(text) is not None:
            return True
        return not _plain(text) and self.decoded.search(normalise(text)[0]) is not None

    def redact(self, text: str) -> str:
        """`text` with every secret's span (in any encoding) replaced by [redacted]."""
        if _plain(text):
            return self.plain.sub(REDACTED, text)
        flat, starts, ends = normalise(text)
        found = [(starts[m.start()], ends[m.end() - 1]) for m in self.hiding.finditer(flat) if m.end() > m.start()]
        # The text as it is too: decoding may take a secret's first characters into an escape
        # that was none (`100%` then a key starting `ab`), so a secret shown plainly is still found.
        found += [m.span() for m in self.plain.finditer(text)]
        spans: list[list[int]] = []
        for start, end in sorted(found):
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)  # overlapping, or two matches in one multi-byte character
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
