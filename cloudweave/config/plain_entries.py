"""An entry chunk of the common shape, read without a YAML parser: `name:` and a mapping of plain scalars (or
flow lists of them), in block or flow style, as bench/program_switch.py's 100,000 endpoints and most
hand-written entries are. The result is exactly the parser's (yamlpos.load_located on the chunk alone):
the same values, types and positions; tests/unit/test_chunks.py compares the two on every shipped file and
on random mutations. Anything of another shape (comments, quotes, nesting, spaces where the patterns put
none, a duplicate key, ...) is None, and the parser reads it.

Why: libyaml's events cost one Python event and one mark per token; the 100,000 endpoints' entries are read
here in 0.8 s, where the parser's located tree of the whole file takes 3.3 s (docs/benchmarks.md).
"""

from __future__ import annotations

import re
from typing import Any

from cloudweave.config.errors import Loc
from cloudweave.config.yamlpos import LDict, LList, plain_scalar, resolves

NAME = r"[A-Za-z_][A-Za-z0-9_.-]*"  # an entry's name (no leading digit: that could be a number)
KEY = r"[A-Za-z_][A-Za-z0-9_]*"
# A plain scalar that reads the same in block and flow context: no space, no indicator, no ':' at its end.
VALUE = r"[A-Za-z0-9_][A-Za-z0-9_.:/+-]*(?<!:)"
ITEMS = rf"\[(?:{VALUE}(?:, {VALUE})*)?\]"  # a flow list of such scalars
HEADER = re.compile(rf"( *)({NAME}):\n")
FIELD = re.compile(rf"( +)({KEY}): ({VALUE}|{ITEMS})(?:\n|$)")
FLOW = re.compile(rf"( *)({NAME}): \{{(.*)\}}(?:\n|$)")
PAIR = re.compile(rf"({KEY}): ({VALUE}|{ITEMS})(, |$)")
ITEM = re.compile(rf"({VALUE})(?:, |\])")
BLANK_TAIL = re.compile(r"\n*")

Parsed = tuple[Any, Any, Loc, Loc]  # as chunks.Parsed: key, value, and their positions


def read_plain_entry(path: str, chunk: str, line: int) -> Parsed | None:
    """The entry `chunk` (starting at `line`) as the parser reads it, or None when it is of another shape."""
    m = HEADER.match(chunk)
    if m is not None:
        return _block(path, chunk, line, m)
    m = FLOW.match(chunk)
    if m is not None and BLANK_TAIL.fullmatch(chunk, m.end()):
        return _flow(path, line, m)
    return None


def _scalar(text: str) -> Any:
    return plain_scalar(text) if resolves(text) else text


_new_loc = tuple.__new__  # Loc(...) without NamedTuple's Python-level __new__, as yamlpos' composer does


def _block(path: str, chunk: str, line: int, header: re.Match) -> Parsed | None:
    indent = len(header.group(1))
    out = LDict()
    key_locs: dict[Any, Loc] = {}
    val_locs: dict[Any, Loc] = {}
    out.key_locs, out.val_locs = key_locs, val_locs
    at, row, field_indent = header.end(), line + 1, -1
    end, match = len(chunk), FIELD.match
    while at < end and chunk[at] != "\n":
        m = match(chunk, at)
        if m is None:
            return None
        lead, written, text = m.group(1, 2, 3)
        spaces = len(lead)
        if spaces != field_indent:
            if field_indent >= 0 or spaces <= indent:
                return None
            field_indent = spaces
        key = plain_scalar(written) if resolves(written) else written  # a KEY resolves only as true, null, ...
        if key in out:
            return None  # a duplicate: the parser says so
        col = spaces + len(written) + 3
        out[key] = _value(path, text, row, col)
        key_locs[key] = _new_loc(Loc, (path, row, spaces + 1))
        val_locs[key] = _new_loc(Loc, (path, row, col))
        at, row = m.end(), row + 1
    if field_indent < 0 or not BLANK_TAIL.fullmatch(chunk, at):
        return None
    out.loc = _new_loc(Loc, (path, line + 1, field_indent + 1))
    return _scalar(header.group(2)), out, _new_loc(Loc, (path, line, indent + 1)), out.loc


def _flow(path: str, line: int, m: re.Match) -> Parsed | None:
    indent, name, inner = len(m.group(1)), m.group(2), m.group(3)
    brace = indent + len(name) + 3  # the column of '{', 1-based
    out = LDict()
    out.key_locs, out.val_locs = {}, {}
    at = 0
    while at < len(inner):
        p = PAIR.match(inner, at)
        if p is None:
            return None
        key = _scalar(p.group(1))
        if key in out:
            return None
        col = brace + 1 + p.start(2)
        out[key] = _value(path, p.group(2), line, col)
        out.key_locs[key] = _new_loc(Loc, (path, line, brace + 1 + p.start(1)))
        out.val_locs[key] = _new_loc(Loc, (path, line, col))
        at = p.end()
        if not p.group(3):
            break
    if at != len(inner) or inner.endswith(", "):
        return None
    out.loc = _new_loc(Loc, (path, line, brace))
    return _scalar(name), out, _new_loc(Loc, (path, line, indent + 1)), out.loc


def _value(path: str, text: str, row: int, col: int) -> Any:
    if text[0] != "[":
        return plain_scalar(text) if resolves(text) else text
    out = LList()
    out.item_locs = []
    out.loc = _new_loc(Loc, (path, row, col))
    for m in ITEM.finditer(text, 1):
        out.append(_scalar(m.group(1)))
        out.item_locs.append(_new_loc(Loc, (path, row, col + m.start(1))))
    return out
