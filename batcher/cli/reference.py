"""The README's command reference, made from the click commands themselves: every command with its
usage, its one-line summary and a table of its options (names, help, default, environment variable).

`python -m batcher.cli.reference README.md` rewrites the README's text between the two marker
comments in place; a test fails when the README differs from what `render()` makes now.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from . import cli

BEGIN = "<!-- reference: begin (made by `python -m batcher.cli.reference README.md`; edit the commands, not this) -->"
END = "<!-- reference: end -->"
COMMAND = "python -m batcher.cli.reference README.md"


def _one_line(text: str) -> str:
    """Text as one line of a Markdown table cell: whitespace collapsed, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def summary(command: click.Command) -> str:
    """The first paragraph of a command's docstring, as one line."""
    help_text = (command.help or "").split("\f")[0].strip()
    return _one_line(help_text.split("\n\n")[0])


def _default(option: click.Option) -> str:
    """What an option is when it is not given: its environment variable, else its default value."""
    default = option.default
    if isinstance(option.show_default, str):
        shown = option.show_default
    elif option.show_default is False or option.is_flag or isinstance(default, bool):
        shown = ""
    elif isinstance(default, (str, int, float)):
        shown = f"`{default}`"
    elif isinstance(default, (tuple, list)) and default:
        shown = ", ".join(f"`{d}`" for d in default)
    else:  # None, or no default at all
        shown = ""
    names = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or ())
    if names:
        env = " or ".join(f"`${n}`" for n in names)
        return f"{env}, else {shown}" if shown else env
    return shown


def option_row(option: click.Option) -> str:
    names = ", ".join(f"`{name}`" for name in [*option.opts, *option.secondary_opts])
    meaning = _one_line(option.help or "")
    if option.multiple:
        meaning += " May be given more than once."
    return f"| {names} | {meaning} | {_default(option)} |"


def command_section(name: str, command: click.Command, parent: click.Context) -> list[str]:
    """One command: a heading, its usage and summary, a table of its options."""
    ctx = click.Context(command, info_name=name, parent=parent)
    usage = " ".join([parent.command_path, name, *command.collect_usage_pieces(ctx)])
    options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
    lines = [f"#### `{parent.command_path} {name}`", "", f"`{usage}`: {summary(command)}", ""]
    if options:
        lines += ["| option | meaning | default |", "|---|---|---|", *map(option_row, options), ""]
    return lines


def render(group: click.Group = cli, prog: str = "batcher") -> str:
    """The whole section: its heading, the group's own options, then every command by name."""
    ctx = click.Context(group, info_name=prog, **group.context_settings)  # its -h as well as --help
    top = [p for p in group.get_params(ctx) if isinstance(p, click.Option) and not p.hidden]
    lines = ["### Every option of every command", "",
             f"What `{prog} COMMAND --help` prints, in one place: made from the commands themselves by "
             f"`{COMMAND}`, and a test fails when this text is not what that command makes now. "
             "Every command also takes `-h`, `--help`.", "",
             f"`{prog} [OPTIONS] COMMAND`: {summary(group)}", "",
             "| option | meaning | default |", "|---|---|---|", *map(option_row, top), ""]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is not None and not command.hidden:
            lines += command_section(name, command, ctx)
    return "\n".join(lines).rstrip("\n") + "\n"


def rewritten(text: str, section: str) -> str:
    """The text with what stands between the marker lines replaced by the section."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.startswith(BEGIN.split(" (")[0])]
    ends = [i for i, line in enumerate(lines) if line.startswith(END)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError(f"expected one line starting {BEGIN.split(' (')[0]!r} and, after it, one starting {END!r}")
    return "".join(lines[:begins[0]]) + BEGIN + "\n\n" + section + "\n" + "".join(lines[ends[0]:])


def main(argv: Sequence[str]) -> int:
    """Rewrite each named file's reference in place; 0 when done, 2 on a usage or marker problem."""
    if not argv or any(a.startswith("-") for a in argv):
        print(f"usage: {COMMAND.removesuffix(' README.md')} FILE.md ...", file=sys.stderr)
        return 2
    section = render()
    for name in argv:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        try:
            new = rewritten(text, section)
        except ValueError as e:
            print(f"{name}: {e}", file=sys.stderr)
            return 2
        if new != text:
            path.write_text(new, encoding="utf-8")
        print(f"{name}: {'rewritten' if new != text else 'already current'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
