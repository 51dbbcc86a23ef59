"""The README as a guide: it opens with the two commands that work on a fresh machine, its contents
list leads to headings that exist, in the README's order, and every link inside it leads to a heading."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
LINK = re.compile(r"\]\(#([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation (backticks too) dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(text: str) -> list[tuple[int, str]]:
    """(level, anchor) of every Markdown heading outside code blocks, in order; a repeated anchor
    gets GitHub's -1, -2, ... suffix."""
    found: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6}) (.+)", line)):
            name = anchor(m.group(2))
            count = seen.get(name, 0)
            seen[name] = count + 1
            found.append((len(m.group(1)), f"{name}-{count}" if count else name))
    return found


def contents(text: str) -> list[str]:
    """The anchors the contents list links to, in its order."""
    section = text.split("\n## Contents\n", 1)[1].split("\n#", 1)[0]
    return LINK.findall(section)


def test_anchors_follow_githubs_rules():
    assert anchor("Where a finished job's video is read from") == "where-a-finished-jobs-video-is-read-from"
    assert anchor("Every reference checked before spending (preflight)") == \
        "every-reference-checked-before-spending-preflight"
    assert anchor("#### `batcher run`".lstrip("# ")) == "batcher-run"
    assert headings("# A\n```\n# not a heading\n```\n## A\n") == [(1, "a"), (2, "a-1")]


def test_every_entry_of_the_contents_links_to_a_heading_in_the_readmes_order():
    text = README.read_text(encoding="utf-8")
    found = headings(text)
    anchors = [name for _, name in found]
    linked = contents(text)
    assert linked, "README.md has no contents list (a '## Contents' section of links)"
    missing = [name for name in linked if name not in anchors]
    assert not missing, f"contents entries without a heading: {missing}"
    positions = [anchors.index(name) for name in linked]
    assert positions == sorted(positions), "the contents list is not in the README's order"
    sections = [name for level, name in found if level == 2 and name != "contents"]
    assert [name for name in linked if name in sections] == sections, "a main (##) section is missing"


def test_every_link_inside_the_readme_leads_to_a_heading():
    text = README.read_text(encoding="utf-8")
    anchors = {name for _, name in headings(text)}
    broken = sorted({name for name in LINK.findall(text) if name not in anchors})
    assert not broken, f"README links to headings that do not exist: {broken}"


def test_the_readme_opens_with_the_two_commands_that_work_on_a_fresh_machine():
    first_block = README.read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    assert "pip install . && batcher run manifests/demo.yaml --simulate" in first_block
    assert "pip install -e '.[test]' && python -m pytest" in first_block
