"""The rules of a model's live JSON schema: what a value breaks, how manifest names map to the
schema's, and its parameters described for people. The schema comes from the network: a malformed
keyword counts as absent; depth, `$ref` loops and fan-out are bounded; the schema's own problems (a
pattern that does not compile, a `$ref` to nothing, too deep to finish) are reported once each."""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from ..text import short, type_name
from .patterns import backtracks

MAX_DEPTH = 50  # schema levels followed: deeper rules are reported as unchecked
MAX_STEPS = 100_000  # subschemas applied in one check, so anyOf and $ref fan-out cannot run for ages
MAX_LISTED = 10  # enum members or accepted names one message shows
MAX_SUGGEST, MAX_NAME = 1000, 100  # names, and characters of each, difflib compares: it is slow on long ones

TYPE_WORDS = {"string": "text", "integer": "a whole number", "number": "a number", "boolean": "true/false",
              "null": "nothing", "array": "a list", "object": "a mapping"}
FACT_WORDS = {"string": "text", "integer": "integer", "number": "number", "boolean": "true/false",
              "null": "null", "array": "list", "object": "mapping"}
WEB_FORMATS = ("uri", "uri-reference")  # the API fetches these; other formats are not checked
BOUNDS = (("minimum", operator.lt, "is below the minimum"), ("maximum", operator.gt, "is above the maximum"),
          ("exclusiveMinimum", operator.le, "must be above"), ("exclusiveMaximum", operator.ge, "must be below"))
# Words of a wire name: an acronym's plural ("URLs"), an acronym, a capitalised or lower word, digits.
WORD = re.compile(r"[A-Z]{2,}s(?![a-z])|[A-Z]+(?![a-z])\d*|[A-Z]?[a-z]+\d*|\d+")

Path = tuple[str | int, ...]
Schema = Mapping[str, Any]


@dataclass(frozen=True)
class Violation:
    """One rule a value breaks: where (property names and list indexes from the top) and why."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{path_text(self.path)}: {self.message}" if self.path else self.message


@dataclass(frozen=True)
class ParameterFacts:
    """One parameter of a schema as a listing shows it."""

    name: str  # as a manifest writes it (snake_case)
    wire: str  # as the schema spells it
    type_text: str  # "integer", "list of URLs", ...
    required: bool
    default: Any
    rule: str  # "3 to 15", "one of 720p, 1080p", "1 to 9 items"; "" when none
    description: str | None


def path_text(path: Path) -> str:
    """('reference_urls', 2, 'url') -> 'reference_urls[2].url'; an odd or long name by its short repr."""
    shown = [p if isinstance(p, int) or (p.isprintable() and len(p) <= 60) else short(p) for p in path]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if i else p for i, p in enumerate(shown))


def check_against(schema: Schema, value: Any) -> list[Violation]:
    """Every violation of `schema` by `value` (empty: it fits), then the schema's own problems. Where an
    integer is wanted, 5.0 is refused as True is: the API receives the value as we send it."""
    check, found = _Check(schema), list[Violation]()
    check.apply(schema, value, (), 0, found)
    return found + check.problems


def wire_name(manifest_name: str, wire_names: Iterable[str]) -> str | None:
    """The schema's spelling of a manifest name (`aspect_ratio` -> `aspectRatio`): equal once lower case and
    without `_` or `-`; an exact match first, then the snake_case match; None if none or still ambiguous."""
    names = [w for w in wire_names if isinstance(w, str)]
    if manifest_name in names:
        return manifest_name
    squashed = manifest_name.lower().replace("_", "").replace("-", "")
    same = [w for w in names if w.lower().replace("_", "").replace("-", "") == squashed]
    if len(same) > 1:
        same = [w for w in same if _snake(w) == manifest_name]
    return same[0] if len(same) == 1 else None


def manifest_name(wire: str) -> str:
    """A wire name as a manifest writes it: `aspectRatio` -> `aspect_ratio`, `referenceURLs` ->
    `reference_urls`. A name with characters other than ASCII letters, digits, `_` and `-` is kept."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]*", wire):
        return wire
    return "_".join(word.lower() for word in WORD.findall(wire))


def suggest(name: str, names: Iterable[str]) -> str | None:
    """The accepted name `name` most likely meant, found among the names and their snake_case forms
    (so `aspect_ratio` finds `aspectRatio`); None when none is close."""
    known = [n for n in names if isinstance(n, str)][:MAX_SUGGEST]
    forms = {_snake(n[:MAX_NAME]): n for n in known} | {n[:MAX_NAME]: n for n in known}
    close = difflib.get_close_matches(name[:MAX_NAME], list(forms), n=1)
    return wire_name(name, known) or (forms[close[0]] if close else None)


def describe_parameters(schema: Schema) -> list[ParameterFacts]:
    """The schema's top-level properties in its order, with their types and rules in words."""
    root = root if isinstance(root := _resolved(schema, schema), Mapping) else {}
    props, required = root.get("properties"), root.get("required")
    needed = {k for k in required if isinstance(k, str)} if isinstance(required, list) else set()
    rules = [(w, _resolved(schema, r)) for w, r in (props.items() if isinstance(props, Mapping) else ())]
    return [ParameterFacts(_snake(w), w, _type_text(schema, r, 0), w in needed, r.get("default"),
                           _rule_text(schema, r, 0),
                           " ".join(t.split()) or None if isinstance(t := r.get("description"), str) else None)
            for w, r in rules if isinstance(w, str) and isinstance(r, Mapping)]


class _Check:
    """One check's state: the root (for $ref), the work done, and the schema problems found."""

    def __init__(self, root: Schema):
        self.root, self.steps, self.problems, self._told = root, 0, list[Violation](), set[str]()
        self._active: set[tuple[str, int]] = set()  # ($ref, id of the value) applications under way
        self._patterns: dict[str, re.Pattern[str] | None] = {}

    def problem(self, path: Path, key: str, message: str) -> None:
        if key not in self._told:
            self._told.add(key)
            self.problems.append(Violation(path, message))

    def apply(self, schema: Any, value: Any, path: Path, depth: int, out: list[Violation]) -> None:
        if schema is False:
            out.append(Violation(path, "not accepted here"))
        if not isinstance(schema, Mapping):
            return
        self.steps += 1
        if depth > MAX_DEPTH or self.steps > MAX_STEPS:
            return self.problem(path, "depth", f"the schema nests deeper than {MAX_DEPTH} levels or is too large "
                                               f"to check in full; the rest was not checked")
        for group in (self._ref, self._type_and_choices, self._numeric, self._sizes, self._text, self._array,
                      self._object, self._combined):
            group(schema, value, path, depth, out)

    def _ref(self, schema: Schema, value: Any, path: Path, depth: int, out: list[Violation]) -> None:
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#"):
            return  # only local references: nothing is fetched
        target, key = _pointer(self.root, ref), (ref, id(value))
        if target is _NOWHERE:
            self.problem(path, f"$ref {ref}", f"the schema's $ref {_brief(ref)} points nowhere; it was not checked")
        elif key not in self._active:  # else a loop: applying it again to this very value finds nothing new
            self._active.add(key)
            try:
                self.apply(target, value, path, depth + 1, out)
            finally:
                self._active.discard(key)

    def _type_and_choices(self, schema: Schema, value: Any, path: Path, _: int, out: list[Violation]) -> None:
        kinds = _kinds(schema)
        if kinds and not any(_is_type(value, k) for k in kinds):
            got = "nothing" if value is None else str(value).lower() if isinstance(value, bool) else \
                f"{type_name(value)} {_brief(value)}"
            out.append(Violation(path, f"must be {' or '.join(TYPE_WORDS[k] for k in kinds)}, got {got}"))
        choices = schema.get("enum")
        if isinstance(choices, list) and choices and _canon(value) not in {_canon(c) for c in choices}:
            out.append(Violation(path, f"{_brief(value)} is not one of {_listed(choices)}"))
        if "const" in schema and _canon(value) != _canon(schema["const"]):
            out.append(Violation(path, f"{_brief(value)} is not {_listed([schema['const']])}, the only value allowed"))

    def _numeric(self, schema: Schema, value: Any, path: Path, _: int, out: list[Violation]) -> None:
        n = _number(value)
        if n is None:
            return
        for key, breaks, why in BOUNDS:
            bound = _number(schema.get(key))
            if bound is not None and breaks(n, bound):
                out.append(Violation(path, f"{_brief(n)} {why} {_brief(bound)}"))
        step = _number(schema.get("multipleOf"))
        if step is not None and step > 0 and _is_multiple(n, step) is False:
            out.append(Violation(path, f"{_brief(n)} is not a multiple of {_brief(step)}"))

    def _sizes(self, schema: Schema, value: Any, path: Path, _: int, out: list[Violation]) -> None:
        if isinstance(value, str):
            keys, what, unit = ("minLength", "maxLength"), f"{_brief(value)} is", "characters long"
        elif isinstance(value, (list, tuple)):
            keys, what, unit = ("minItems", "maxItems"), "has", "item(s)"
        else:
            return
        (lo, hi), size = (_count(schema.get(k)) for k in keys), len(value)
        if lo is not None and size < lo:
            out.append(Violation(path, f"{what} {size} {unit}; the least is {lo}" if size else "must not be empty"))
        if hi is not None and size > hi:
            out.append(Violation(path, f"{what} {size} {unit}; the most is {hi}"))

    def _text(self, schema: Schema, value: Any, path: Path, _: int, out: list[Violation]) -> None:
        if not isinstance(value, str):
            return
        compiled = self._compiled(pattern, path) if isinstance(pattern := schema.get("pattern"), str) else None
        if compiled is not None and compiled.search(value) is None:
            out.append(Violation(path, f"{_brief(value)} does not match the pattern {_brief(pattern)}"))
        if schema.get("format") in WEB_FORMATS and not _is_web_url(value):
            out.append(Violation(path, f"{_brief(value)} is not an http or https URL"))

    def _compiled(self, pattern: str, path: Path) -> re.Pattern[str] | None:
        if pattern not in self._patterns and backtracks(pattern):
            self._patterns[pattern] = None  # the API judges it: re has no time limit (see `patterns`)
        if pattern not in self._patterns:
            try:  # ECMA-262 names a group (?<name>...) where Python's re wants (?P<name>...)
                self._patterns[pattern] = re.compile(re.sub(r"(?<!\\)\(\?<(?![=!])", "(?P<", pattern))
            except (re.error, OverflowError, RecursionError, ValueError) as e:
                self._patterns[pattern] = None
                self.problem(path, f"pattern {pattern}", f"the schema's pattern {_brief(pattern)} is not a regular "
                                                         f"expression ({' '.join(str(e).split())}); it was not checked")
        return self._patterns[pattern]

    def _array(self, schema: Schema, value: Any, path: Path, depth: int, out: list[Violation]) -> None:
        if not isinstance(value, (list, tuple)):
            return
        seen: set[Any] = set()
        for item in value if schema.get("uniqueItems") is True else ():
            if (key := _canon(item)) in seen:
                out.append(Violation(path, f"{_brief(item)} appears more than once"))
            seen.add(key)
        for i, item in enumerate(value if "items" in schema else ()):
            self.apply(schema["items"], item, (*path, i), depth + 1, out)

    def _object(self, schema: Schema, value: Any, path: Path, depth: int, out: list[Violation]) -> None:
        if not isinstance(value, Mapping):
            return
        props, required, extra = schema.get("properties"), schema.get("required"), schema.get("additionalProperties")
        props = props if isinstance(props, Mapping) else {}
        for key in required if isinstance(required, list) else ():
            if isinstance(key, str) and key not in value:
                out.append(Violation((*path, key), "required but not given"))
        for key, item in value.items():
            name = key if isinstance(key, str) else _brief(key)
            if key in props:
                self.apply(props[key], item, (*path, name), depth + 1, out)
            elif extra is False:
                out.append(Violation((*path, name), _not_accepted(name, props, path)))
            elif isinstance(extra, Mapping):
                self.apply(extra, item, (*path, name), depth + 1, out)

    def _combined(self, schema: Schema, value: Any, path: Path, depth: int, out: list[Violation]) -> None:
        every = schema.get("allOf")
        for rule in every if isinstance(every, list) else ():
            self.apply(rule, value, path, depth + 1, out)
        for key in ("anyOf", "oneOf"):
            branches, results = schema.get(key), list[list[Violation]]()
            for rule in branches if isinstance(branches, list) else ():
                results.append([])
                self.apply(rule, value, path, depth + 1, results[-1])
                if not results[-1] and key == "anyOf":
                    break
            fitting = sum(1 for found in results if not found)
            if results and not fitting:
                reasons = list(dict.fromkeys(str(Violation(r[0].path[len(path):], r[0].message)) for r in results))
                out.append(Violation(path, f"{_brief(value)} fits none of the allowed forms "
                                           f"({'; or '.join(reasons[:3])}{'; ...' if len(reasons) > 3 else ''})"))
            elif key == "oneOf" and fitting > 1:
                out.append(Violation(path, f"{_brief(value)} fits {fitting} of the allowed forms; exactly one must"))


_NOWHERE = object()
_snake = manifest_name  # (for wire_name, whose parameter has the same name)

def _pointer(root: Any, ref: str) -> Any:
    """What a local `$ref` ('#', '#/$defs/x', '#/definitions/a~1b') points at, or _NOWHERE."""
    pointer, node = unquote(ref[1:]), root
    if not pointer.startswith("/"):
        return root if not pointer else _NOWHERE  # (a named anchor is not supported)
    for part in (p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isascii() and part.isdigit() and len(part) < 10 and int(part) < len(node):
            node = node[int(part)]
        else:
            return _NOWHERE
    return node

def _resolved(root: Any, rule: Any) -> Any:
    """A rule with its local `$ref` followed, a few hops at most (so a loop just stops)."""
    for _ in range(MAX_LISTED):
        ref = rule.get("$ref") if isinstance(rule, Mapping) else None
        if (target := _pointer(root, ref) if isinstance(ref, str) and ref.startswith("#") else _NOWHERE) is _NOWHERE:
            break
        rule = target
    return rule

def _kinds(schema: Schema) -> list[str]:
    """The known type names a schema's `type` holds (a name or a list of names)."""
    kinds = schema.get("type")
    names = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else []
    return [k for k in names if isinstance(k, str) and k in TYPE_WORDS]

def _is_type(value: Any, kind: str) -> bool:
    if kind in ("number", "integer"):
        return _number(value) is not None and (kind == "number" or isinstance(value, int))
    kinds: dict[str, Any] = {"string": str, "boolean": bool, "array": (list, tuple), "object": Mapping}
    return value is None if kind == "null" else isinstance(value, kinds[kind])

def _number(value: Any) -> int | float | None:
    """A number (not true/false, not NaN), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if isinstance(value, float) and math.isnan(value) else value

def _count(value: Any) -> int | None:
    """A keyword's count (minLength, maxItems, ...): a whole number, 0 or more; else None."""
    n = _number(value)
    return None if n is None or n < 0 or (isinstance(n, float) and not n.is_integer()) else int(n)

def _is_multiple(n: int | float, step: int | float) -> bool | None:
    """Whether n is a multiple of step; None when floats cannot tell (overflow, absurd sizes)."""
    if isinstance(n, int) and isinstance(step, int):
        return n % step == 0
    try:
        ratio = n / step
    except OverflowError:
        return None
    return abs(ratio - round(ratio)) <= 1e-9 * max(1.0, abs(ratio)) if math.isfinite(ratio) else None

def _is_web_url(text: str) -> bool:
    try:
        return urlsplit(text).scheme.lower() in ("http", "https") and bool(urlsplit(text).hostname)
    except ValueError:  # (an unclosed IPv6 bracket)
        return False

def _canon(value: Any, depth: int = 0) -> Any:
    """A hashable form, equal for values JSON calls equal (1 and 1.0, but not true and 1)."""
    if depth > MAX_DEPTH:
        return ("deep", id(value))
    if value is None or isinstance(value, (bool, str, int, float)):
        return ("number" if _number(value) is not None else type(value).__name__, value)
    if isinstance(value, (list, tuple)):
        return ("array", tuple(_canon(v, depth + 1) for v in value))
    if isinstance(value, Mapping):
        return ("object", frozenset((_canon(k, depth + 1), _canon(v, depth + 1)) for k, v in value.items()))
    return ("other", id(value))

def _brief(value: Any) -> str:
    try:
        return short(value)
    except ValueError:  # an int too long to print
        return "a very large number"

def _listed(values: list[Any]) -> str:
    """Allowed values as a listing shows them: short text bare, anything else as its repr."""
    shown = [_brief(v)[1:-1] if isinstance(v, str) and len(v) <= 40 else _brief(v) for v in values[:MAX_LISTED]]
    return ", ".join(shown) + (f", ... ({len(values)} in all)" if len(values) > MAX_LISTED else "")

def _not_accepted(name: str, props: Schema, path: Path) -> str:
    where, names = "here" if path else "by this model", [k for k in props if isinstance(k, str)]
    guess = suggest(name, names)
    if guess is not None:
        return f"not accepted {where} (did you mean {_listed([guess])}?)"
    return f"not accepted {where} (it takes {_listed(names)})" if names else f"not accepted {where}"

def _type_text(root: Schema, rule: Schema, depth: int) -> str:
    """'integer', 'text', 'URL', 'list of URLs', 'integer or null'; 'choice' for an untyped enum."""
    branches = rule.get("anyOf", rule.get("oneOf"))  # a nullable parameter: anyOf [{type: X}, {type: null}]
    resolved = [_resolved(root, b) for b in (branches if isinstance(branches, list) else ())]
    kinds = _kinds(rule) or [k for b in resolved if isinstance(b, Mapping) for k in _kinds(b)]
    words, items = [], _resolved(root, rule.get("items"))
    for kind in kinds:
        inner = _type_text(root, items, depth + 1) if depth < 3 and isinstance(items, Mapping) else ""
        if kind == "string" and rule.get("format") in WEB_FORMATS:
            words.append("URL")
        elif kind == "array" and inner:
            plural = inner in ("URL", "integer", "number", "mapping")
            words.append(f"list of {inner}s" if plural else f"list of {inner}")
        else:
            words.append(FACT_WORDS[kind])
    return " or ".join(dict.fromkeys(words)) or ("choice" if isinstance(rule.get("enum"), list) else "")

def _rule_text(root: Schema, rule: Schema, depth: int) -> str:
    """'3 to 15', 'one of 720p, 1080p', '1 to 9 items', joined by '; '."""
    choices, pattern, step = rule.get("enum"), rule.get("pattern"), _number(rule.get("multipleOf"))
    above, below = _number(rule.get("exclusiveMinimum")), _number(rule.get("exclusiveMaximum"))
    least, most = _count(rule.get("minLength")), _count(rule.get("maxLength"))
    items = _resolved(root, rule.get("items"))
    each = _rule_text(root, items, depth + 1) if depth < 3 and isinstance(items, Mapping) else ""
    parts = [f"one of {_listed(choices)}" if isinstance(choices, list) and choices else "",
             f"exactly {_listed([rule['const']])}" if "const" in rule else "",
             _span(_number(rule.get("minimum")), _number(rule.get("maximum")), ""),
             f"above {_brief(above)}" if above is not None else "",
             f"below {_brief(below)}" if below is not None else "",
             f"a multiple of {_brief(step)}" if step is not None and step > 0 else "",
             "not empty" if least == 1 and most is None else _span(least, most, " characters"),
             f"matching {_brief(pattern)}" if isinstance(pattern, str) else "",
             _span(_count(rule.get("minItems")), _count(rule.get("maxItems")), " items"),
             "no repeats" if rule.get("uniqueItems") is True else "", f"each {each}" if each else ""]
    return "; ".join(p for p in parts if p)

def _span(lo: int | float | None, hi: int | float | None, unit: str) -> str:
    if lo is not None and hi is not None:
        return f"{_brief(lo)} to {_brief(hi)}{unit}"
    return f"at least {_brief(lo)}{unit}" if lo is not None else f"at most {_brief(hi)}{unit}" if hi is not None else ""
