"""YAML text to values that remember their lines (LineDict, LineList), within limits: the
expanded size of aliases, the length of numbers, and values PyYAML cannot build (2001-02-30)
all become `FILE:LINE` diagnostics, never a traceback."""

from __future__ import annotations

from typing import Any

import yaml

from ..text import lone_surrogate, short
from .diagnostics import Diagnostics

# Most values (scalars, lists, mappings) a YAML manifest may hold once its aliases are expanded:
# an alias counts the full size of what it names, each time it is used. Without this, a few
# hundred bytes of nested aliases stand for billions of values (a "billion laughs" file). A
# plain file under 1 MB holds at most about 500,000 values, so only aliases reach the limit.
MAX_YAML_VALUES = 1_000_000
# Most digits an unquoted integer may have. Python refuses to convert more than 4,300 decimal
# digits (and 0x... text converts, then fails when printed), and building one is quadratic:
# no manifest means such a number, so it is refused where it is written.
MAX_NUMBER_DIGITS = 1_000


class LineDict(dict[Any, Any]):
    """A mapping that remembers the line of each key and value."""

    __slots__ = ("key_lines", "line", "value_lines")  # no __dict__: a manifest can hold 500,000 of these
    line: int
    key_lines: dict[Any, int]
    value_lines: dict[Any, int]


class LineList(list[Any]):
    """A list that remembers the line of each item."""

    __slots__ = ("item_lines", "line")
    line: int
    item_lines: list[int]


def value_line(mapping: Any, key: Any, default: int) -> int:
    """The line of `mapping[key]`, or `default` for a mapping that does not know it."""
    lines = getattr(mapping, "value_lines", None)
    return lines.get(key, default) if lines else default


def key_line(mapping: Any, key: Any, default: int) -> int:
    """The line of `key` in `mapping`, or `default` for a mapping that does not know it."""
    lines = getattr(mapping, "key_lines", None)
    return lines.get(key, default) if lines else default


class SexagesimalInt(int):
    """An integer YAML 1.1 read from `a:b` digits (unquoted 16:9 is 969), keeping the text so a
    message can say what happened; it behaves as the plain int everywhere else (keys included)."""

    text: str


def sexagesimal_problem(name: str, value: Any) -> str | None:
    """For an enum parameter given an unquoted `a:b` number: what to write instead."""
    if isinstance(value, SexagesimalInt):
        return (f'{name}: write "{value.text}" in quotes (unquoted, YAML reads {value.text} as the number '
                f'{int(value)})')
    return None


def _digits(text: str) -> int:
    """How many digits an integer's YAML text has, without its sign, base prefix or separators."""
    body = text.replace("_", "").replace(":", "").lstrip("+-")
    return len(body) - 2 if body[:2].lower() in ("0x", "0b", "0o") else len(body)


def _construct_int(loader: Any, node: yaml.ScalarNode) -> int:
    if isinstance(node.value, str) and _digits(node.value) > MAX_NUMBER_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"this number has {_digits(node.value):,} digits; the most batcher reads is "
            f"{MAX_NUMBER_DIGITS:,} (write it in quotes if it is text)", node.start_mark)
    value: int = loader.construct_yaml_int(node)
    if isinstance(node.value, str) and ":" in node.value:
        out = SexagesimalInt(value)
        out.text = node.value
        return out
    return value


class _TooLarge(yaml.MarkedYAMLError):
    """The document, aliases expanded, is past MAX_YAML_VALUES (or an alias names itself)."""


def _check_size(root: yaml.Node, limit: int) -> None:
    """Raise _TooLarge where the document's expanded size first passes `limit`.

    Walks the composed node graph once: a node reached again through an alias is not walked
    again but adds its remembered size, so the walk is linear in the file however much the
    aliases would expand.
    """
    sizes: dict[int, int] = {}
    total = 0

    def add(node: yaml.Node, where: yaml.Mark | None) -> None:
        nonlocal total
        known = sizes.get(id(node))
        if known is not None:
            if known < 0:
                raise _TooLarge(None, None, "this alias names a value that contains it", where or node.start_mark)
            total += known
            if total > limit:
                raise _TooLarge(None, None, f"the aliases here expand the manifest past {limit:,} values "
                                f"(the most batcher reads); write the values out or use fewer aliases",
                                where or node.start_mark)
            return
        sizes[id(node)] = -1  # being walked: reaching it again means a cycle
        before = total
        total += 1
        if total > limit:
            raise _TooLarge(None, None, f"the manifest holds more than {limit:,} values (the most batcher "
                            f"reads)", node.start_mark)
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                # An alias has no mark of its own: the sequence's line is the nearest we know.
                add(child, node.start_mark if id(child) in sizes else child.start_mark)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                add(key, key.start_mark)
                add(value, key.start_mark if id(value) in sizes else value.start_mark)
        sizes[id(node)] = total - before

    add(root, None)


def _unbuildable(node: yaml.Node, error: Exception) -> str:
    """What to say of a scalar PyYAML parsed but cannot build (a date past the month's end)."""
    if node.tag == "tag:yaml.org,2002:timestamp":
        return f"{node.value} is not a date ({error}); write it in quotes if it is text"
    return f"cannot read {short(node.value)} ({error}); write it in quotes if it is text"


# libyaml when PyYAML has it: the pure-Python parser takes seconds and hundreds of MB for a
# dense 1 MB file. Both give the same marks and the same values.
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc]  # yaml's loaders are untyped
    def construct_document(self, node: yaml.Node) -> Any:
        _check_size(node, MAX_YAML_VALUES)
        return super().construct_document(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML's scalar constructors raise plain ValueError (datetime's range checks, int's
        # digit limit): without the node's mark that would be a traceback, not a FILE:LINE.
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(None, None, _unbuildable(node, e), node.start_mark) from None


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str:
    # The pure-Python parser builds "\ud800" (libyaml refuses it): a text no file, hash or
    # console can hold, refused here at its line.
    value: str = loader.construct_yaml_str(node)
    surrogate = lone_surrogate(value)
    if surrogate is not None:
        raise yaml.constructor.ConstructorError(
            None, None, f"{surrogate} is half of a UTF-16 surrogate pair, not a character", node.start_mark)
    return value


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short(key_node.value)} (first at line {seen[key_node.value]})",
                    key_node.start_mark)
            seen[key_node.value] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines, out.value_lines = {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be plain text, not a list or mapping", key_node.start_mark
            ) from None
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
        out.value_lines[key] = value_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def parse_yaml(text: str, display: str, diags: Diagnostics) -> Any:
    """YAML text to LineDict/LineList values; syntax problems become diagnostics."""
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects
    except _TooLarge as e:
        mark = e.problem_mark
        diags.add(display, mark.line + 1 if mark else 1, e.problem or "the manifest is too large")
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        problem = e.problem or e.context or "invalid YAML"
        diags.add(display, line, f"invalid YAML: {problem}")
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        # libyaml gives the character as a number, the Python reader as text.
        char = chr(e.character) if isinstance(e.character, int) else e.character
        diags.add(display, line, f"invalid YAML: character {short(char)} is not allowed in YAML")
    except yaml.YAMLError as e:
        diags.add(display, 1, f"invalid YAML: {str(e).splitlines()[0] if str(e) else 'unreadable'}")
    except RecursionError:
        diags.add(display, 1, "the YAML is nested too deeply")
    return None
