"""docs/design.md's "Where it happens" table names files and the functions in them: each must exist, so that the
map a newcomer follows cannot drift from the tree."""

import os
import re

from testkit.harness import ROOT


def where_it_happens() -> list[str]:
    text = open(os.path.join(ROOT, "docs", "design.md")).read()
    section = text.split("## Where it happens", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| behaviour")]


def test_every_file_and_function_the_map_names_exists():
    rows = where_it_happens()
    assert len(rows) >= 8, rows
    checked = 0
    for row in rows:
        for cell in row.strip("|").split(" | ")[1:]:
            path = None
            for token in re.findall(r"`([^`]+)`", cell):
                if "/" in token:
                    path = token
                    assert os.path.exists(os.path.join(ROOT, path)), f"{path} (in: {row[:60]}...)"
                    checked += 1
                elif re.fullmatch(r"[A-Za-z_][\w.]*", token) and path and path.endswith(".py"):
                    name = token.rsplit(".", 1)[-1]
                    source = open(os.path.join(ROOT, path)).read()
                    assert re.search(rf"^\s*(def|class) {name}\b|^{name} = ", source, re.M), f"{token} in {path}"
                    checked += 1
    assert checked >= 40, checked
