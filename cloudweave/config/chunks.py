"""Load a YAML file chunk by chunk, so that an edit re-parses only the chunks it touched.

A file is cut where its structure says so: at each top-level section, and inside a section that is a block
mapping (sites, endpoints, ...) at each of its entries. Every chunk is parsed by the same PyYAML reader
(yamlpos.load_located) on its own and kept, with its place, in a ChunkCache: the next load of the file parses
only chunks whose text is new, and moves those that only moved. The result is what parsing the whole file
gives, node for node and position for position (tests/unit/test_chunks.py checks it on every shipped file and
on mutated ones), because a chunk is cut only where nothing can cross the cut: the file must use none of
anchors, aliases, tags, merge keys, block scalars, directives, document markers or tabs, and every cut falls on
a line that starts a plain key at the chunk's indentation. Anything else, and any chunk with a problem, is
parsed as a whole file instead, so every message is exactly the whole-file reader's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cloudweave.config.errors import Loc, Problem
from cloudweave.config.plain_entries import read_plain_entry
from cloudweave.config.yamlpos import LDict, LList, load_located

NOT_CHUNKABLE = ("&", "*", "!", "|", ">", "%", "\t", "\r", "<<", "\n---", "\n...", "? ")  # YAML that spans cuts
TOP_KEY = re.compile(r"\n(?=[^\s#-])")  # before a line that starts a key at column 1 (not "- ": indentless list)
PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*:(?:[ \n]|$)")
HEADER_ONLY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*:[ ]*(?:#.*)?$")
FIRST_BODY_LINE = re.compile(r"^( *)(?=[^\s#])", re.M)
BLOCK = 1 << 16
MAX_SECTIONS = 16  # the format has 9 top-level sections
YAML_BUDGET = 2000  # chunks a first load parses one by one before it parses the whole file instead

Parsed = tuple[str, Any, Loc, Loc]  # a section or an entry: key, value, and their positions


@dataclass
class _Entry:
    start: int  # offset in its section's body
    text: str
    line: int
    parsed: Parsed


@dataclass
class _Section:
    text: str
    line: int
    parsed: Parsed
    body: str = ""
    entries: list[_Entry] | None = None  # a block mapping, an entry a chunk
    indent: str = ""  # where its entries were cut


class ChunkCache:
    """Each file's sections as last loaded (with their entries); kept by whoever loads the same files again
    (the controller). `parsed` counts the chunks the last load had to parse."""

    def __init__(self) -> None:
        self._files: dict[str, dict[str, _Section]] = {}
        self.parsed = 0
        self.parsed_by_yaml = 0  # of those, the chunks of a shape plain_entries does not read
        self.budget: int | None = None  # a first load's most chunks for the parser (_first_load)
        self._known: dict[int, tuple[Parsed, int | None]] = {}  # a first load's: see _parses_by_line

    def parse(self, path: str, chunk: str, line: int) -> Parsed | None:
        known = self._known.get(line)
        # The whole file's parse of the key on this line stands for the chunk's only if the chunk ends where
        # the next key (of its mapping, or of one around it) begins: else it holds more than that key's value.
        if known is not None and str(known[0][0]) == chunk.split(":", 1)[0].strip() and \
                known[1] in (None, line + chunk.count("\n")):
            return known[0]
        self.parsed += 1
        plain = read_plain_entry(path, chunk, line)
        if plain is not None:
            return plain
        self.parsed_by_yaml += 1
        if self.budget is not None and self.parsed_by_yaml > self.budget:
            raise _OverBudget
        tree, problems = load_located(path, chunk)
        if problems or not isinstance(tree, LDict) or len(tree) != 1:
            return None
        return _only(_shift(tree, line - 1))


def load_chunked(path: str, text: str, cache: ChunkCache, sections: Any = None) -> tuple[Any, list[Problem]]:
    """yamlpos.load_located(path, text, sections), from cached chunks where it can be."""
    if path not in cache._files:
        return _first_load(path, text, cache, sections)
    doc = _try_chunked(path, text, cache)
    if doc is None:
        cache._files.pop(path, None)
        return load_located(path, text, sections)
    return doc, []


def _first_load(path: str, text: str, cache: ChunkCache, sections: Any) -> tuple[Any, list[Problem]]:
    """A file not in the cache: cut into chunks, the entries of the common shape read without the parser
    (plain_entries), the rest parsed chunk by chunk. Where that cannot be done (a structure that spans cuts,
    a problem, or more than YAML_BUDGET chunks the parser must read: one parser per chunk costs 1.5 times
    what one parser over the whole file does), the file is parsed whole once, its chunks cut as usual and
    each given its parse from the whole file's tree, for the next load."""
    if not any(s in text for s in NOT_CHUNKABLE):
        cache.budget = YAML_BUDGET
        try:
            doc = _try_chunked(path, text, cache)
        except _OverBudget:
            doc = None
        finally:
            cache.budget = None
        if doc is not None and (sections is None or all(k in sections for k in doc)):
            return doc, []
        cache._files.pop(path, None)
    doc, problems = load_located(path, text, sections)
    if problems or not isinstance(doc, LDict) or (sections is not None and any(k not in sections for k in doc)):
        return doc, problems  # what the whole-file reader says; the next load tries chunks again
    cache._known = _parses_by_line(doc)
    try:
        if _try_chunked(path, text, cache) is None:
            cache._files.pop(path, None)
    finally:
        cache._known = {}
    return doc, problems


class _OverBudget(Exception):
    """A first load met more chunks of another shape than it is worth parsing one by one."""


def _parses_by_line(doc: LDict) -> dict[int, tuple[Parsed, int | None]]:
    """Each section's, and each entry of a mapping section's, key, value and positions, by the key's line; with
    the line where the next key begins (of the same mapping, or of the one around it; None: no key follows)."""
    out: dict[int, tuple[Parsed, int | None]] = {}
    keys = list(doc)
    for i, key in enumerate(keys):
        at = doc.key_locs[key]
        after = doc.key_locs[keys[i + 1]].line if i + 1 < len(keys) else None
        out[at.line] = ((key, doc[key], at, doc.val_locs[key]), after)
        value = doc[key]
        if isinstance(value, LDict):
            names = list(value)
            for j, name in enumerate(names):
                loc = value.key_locs[name]
                nxt = value.key_locs[names[j + 1]].line if j + 1 < len(names) else after
                out.setdefault(loc.line, ((name, value[name], loc, value.val_locs[name]), nxt))
    return out


def _try_chunked(path: str, text: str, cache: ChunkCache) -> LDict | None:
    if any(s in text for s in NOT_CHUNKABLE):
        return None
    starts = ([0] if text[:1] not in " \t\n#-" else []) + [m.start() + 1 for m in TOP_KEY.finditer(text)]
    first = FIRST_BODY_LINE.search(text)
    if not starts or first is None or first.start() != starts[0]:
        return None  # empty, or the document starts with something other than a key at column 1
    if len(starts) > MAX_SECTIONS:
        return None  # more sections than the format has: unknown ones, which the whole-file reader reports
    before = cache._files.get(path, {})
    after: dict[str, _Section] = {}
    root = LDict()
    root.key_locs, root.val_locs = {}, {}
    cache.parsed = cache.parsed_by_yaml = 0
    line = text.count("\n", 0, starts[0]) + 1
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        section = _section(path, text[start:end], line, before, cache)
        if section is None or section.parsed[0] in root:
            return None  # a problem, or a section given twice: the whole-file reader words those
        key, value, key_loc, val_loc = section.parsed
        root[key], root.key_locs[key], root.val_locs[key] = value, key_loc, val_loc
        after[key] = section
        line += section.text.count("\n")
    root.loc = root.key_locs[next(iter(root))]
    cache._files[path] = after
    return root


def _section(path: str, text: str, line: int, before: dict[str, _Section], cache: ChunkCache) -> _Section | None:
    m = PLAIN_KEY.match(text)
    if not m:
        return None
    key = text.split(":", 1)[0]
    old = before.get(key)
    if old is not None and old.text == text and old.line == line:
        return old
    header_end = text.find("\n")
    header = text if header_end < 0 else text[:header_end]
    body = "" if header_end < 0 else text[header_end + 1:]
    first = FIRST_BODY_LINE.search(body)
    indented = first is not None and first.group(1) and not body[first.end():].startswith("-")
    if HEADER_ONLY.match(header) and indented:  # a block mapping: an entry a chunk
        entries = _entries(path, body, first.group(1), line, old if old is not None and old.entries else None, cache)
        if entries is None:
            return None
        out = LDict()
        out.key_locs, out.val_locs = {}, {}
        for e in entries:
            name, value, key_loc, val_loc = e.parsed
            if name in out:
                return None  # a duplicate entry: the whole-file reader words that
            out[name], out.key_locs[name], out.val_locs[name] = value, key_loc, val_loc
        out.loc = out.key_locs[next(iter(out))]
        return _Section(text, line, (key, out, Loc(path, line, 1), out.loc), body, entries, first.group(1))
    if old is not None and old.text == text:
        return _Section(text, line, _shift_parsed(old.parsed, line - old.line))
    parsed = cache.parse(path, text, line)
    return None if parsed is None else _Section(text, line, parsed)


def _entries(path: str, body: str, indent: str, line: int, old: _Section | None,
             cache: ChunkCache) -> list[_Entry] | None:
    """A block mapping's entries, cut where a plain key starts at its indent. Of the old section's entries,
    those in the text both versions start with, and those in the text both end with, are kept (the latter
    moved by the lines inserted or deleted before them); only the text between is cut again, and of its
    chunks only those not seen before are parsed."""
    head: list[_Entry] = []
    tail: list[_Entry] = []
    lo, hi = 0, len(body)
    if old is not None and old.indent != indent:
        old = None  # cut elsewhere: none of its entries is a chunk here
    seen: list[_Entry] = old.entries if old is not None and old.entries else []
    if old is not None and old.entries and old.line == line:
        prefix, suffix = _common_ends(old.body, body)
        ends = [e.start for e in old.entries[1:]] + [len(old.body)]
        n = 0  # kept at the start: the next entry's start (its indent and first character) is shared too
        while n < len(old.entries) and ends[n] + len(indent) < prefix:
            n += 1
        t = len(old.entries)  # kept at the end: the newline before it is shared too
        while t > n and old.entries[t - 1].start > len(old.body) - suffix:
            t -= 1
        shift, lines = len(body) - len(old.body), body.count("\n") - old.body.count("\n")
        head = old.entries[:n]
        tail = old.entries[t:] if shift == 0 and lines == 0 else [
            _Entry(e.start + shift, e.text, e.line + lines, _shift_parsed(e.parsed, lines)) for e in old.entries[t:]]
        lo = ends[n - 1] if n else 0
        hi = tail[0].start if tail else len(body)
        seen = old.entries[n:t]
    moved = {e.text: e for e in seen}
    # Kept entries were checked when they were cut; in the text cut again, no line may start left of the
    # entries (that is a structure only the whole-file reader can word).
    if len(indent) > 1 and re.compile(rf"^ {{1,{len(indent) - 1}}}(?=[^\s#])", re.M).search(body, lo, hi):
        return None
    starts = [m.start() for m in re.compile(rf"^{indent}(?=[^\s#])", re.M).finditer(body, lo, hi)]
    if not head and _content_before(body, starts[0] if starts else hi):
        return None
    if not (head or starts or tail):
        return None
    middle: list[_Entry] = []
    at = line + 1 + body.count("\n", 0, starts[0]) if starts else 0
    for i, start in enumerate(starts):
        chunk = body[start:starts[i + 1] if i + 1 < len(starts) else hi]
        if not PLAIN_KEY.match(chunk, len(indent)):
            return None
        was = moved.get(chunk)
        parsed = _shift_parsed(was.parsed, at - was.line) if was is not None else cache.parse(path, chunk, at)
        if parsed is None:
            return None
        middle.append(_Entry(start, chunk, at, parsed))
        at += chunk.count("\n")
    return head + middle + tail


def _content_before(body: str, first: int) -> bool:
    """Whether anything but blank and comment lines stands before the first entry."""
    return any(ln.strip() and not ln.lstrip().startswith("#") for ln in body[:first].split("\n"))


def _common_ends(a: str, b: str) -> tuple[int, int]:
    """The lengths of the longest common prefix and suffix of a and b, not overlapping in the shorter."""
    n = min(len(a), len(b))
    p = 0
    while p + BLOCK <= n and a[p:p + BLOCK] == b[p:p + BLOCK]:
        p += BLOCK
    while p < n and a[p] == b[p]:
        p += 1
    limit, s = n - p, 0
    while s + BLOCK <= limit and a[len(a) - s - BLOCK:len(a) - s] == b[len(b) - s - BLOCK:len(b) - s]:
        s += BLOCK
    while s < limit and a[len(a) - s - 1] == b[len(b) - s - 1]:
        s += 1
    return p, s


def _shift_parsed(parsed: Parsed, lines: int) -> Parsed:
    if lines == 0:
        return parsed
    key, value, key_loc, val_loc = parsed
    return key, _shift(value, lines), _moved(key_loc, lines), _moved(val_loc, lines)


def _only(tree: LDict) -> tuple[str, Any, Loc, Loc]:
    """A one-key chunk's key, value and their positions."""
    ((key, value),) = tree.items()
    return key, value, tree.key_locs[key], tree.val_locs[key]


def _shift(tree: Any, lines: int) -> Any:
    """The same tree with every position `lines` further down (a copy; cached trees are never changed)."""
    if lines == 0:
        return tree
    if isinstance(tree, LDict):
        out = LDict((k, _shift(v, lines)) for k, v in tree.items())
        out.loc = _moved(tree.loc, lines)
        out.key_locs = {k: _moved(loc, lines) for k, loc in tree.key_locs.items()}
        out.val_locs = {k: _moved(loc, lines) for k, loc in tree.val_locs.items()}
        return out
    if isinstance(tree, LList):
        out_list = LList(_shift(v, lines) for v in tree)
        out_list.loc = _moved(tree.loc, lines)
        out_list.item_locs = [_moved(loc, lines) for loc in tree.item_locs]
        return out_list
    return tree


def _moved(loc: Loc, lines: int) -> Loc:
    return Loc(loc.file, loc.line + lines, loc.col)
