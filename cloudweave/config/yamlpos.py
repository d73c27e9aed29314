"""YAML loading that keeps the file, line and column of every key and value.

The tree is built from libyaml's parser events by a small iterative composer (PyYAML's composer recurses, and a
file nested 100,000 deep crashed it): nesting, alias expansion and document count are bounded, and a break of
a bound is a located problem like a syntax error. Plain scalars are read by YAML 1.2's core schema
(true/false, null, decimal, 0o and 0x integers, floats), not YAML 1.1's: `yes` stays a string, `010` and `1:30`
are not silently read as 8 and 90 but stay strings that a number field refuses with a hint. Merge keys
(`<<: *base`) work as YAML defines them: the mapping's own keys override the merged ones.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from cloudweave.config.errors import Loc, Problem, escape

try:
    from yaml._yaml import CParser as _Parser  # libyaml: the same events and marks, many times faster
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml import Loader as _Parser  # type: ignore[assignment]

MAX_DEPTH = 64  # mappings and sequences inside each other; the deepest shipped file uses 5
MAX_ALIAS_VALUES = 100_000  # values that aliases may add to a document in all (a "billion laughs" adds 10**9)
MAX_PROBLEMS = 1000  # duplicate keys reported by one parse
MAX_NUMBER_DIGITS = 40  # longer digit strings stay strings, so that no field meets a 5,000-digit number

_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_INT_PREFIXED = re.compile(r"0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?")  # a '.' or an exponent
_SPECIAL = {"~": None, "null": None, "Null": None, "NULL": None, "": None,
            "true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False,
            ".inf": float("inf"), ".Inf": float("inf"), ".INF": float("inf"),
            "+.inf": float("inf"), "+.Inf": float("inf"), "+.INF": float("inf"),
            "-.inf": float("-inf"), "-.Inf": float("-inf"), "-.INF": float("-inf"),
            ".nan": float("nan"), ".NaN": float("nan"), ".NAN": float("nan")}
_STR_TAG = "tag:yaml.org,2002:str"
_NUMBERISH = frozenset("0123456789+-.")
_MERGE = "<<"


class LDict(dict):
    """A mapping that remembers where each key and value stood."""

    loc: Loc
    key_locs: dict[Any, Loc]
    val_locs: dict[Any, Loc]


class LList(list):
    """A sequence that remembers where each item stood."""

    loc: Loc
    item_locs: list[Loc]


def show(value: Any, limit: int = 60) -> str:
    """A user's value as it may appear in a one-line message: control and line-break characters escaped,
    long values shortened."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} characters)"
    return escape(text)


def known_keys(raw: LDict, allowed: Any, what: str, error: Any) -> bool:
    """Report every key of `raw` that is not in `allowed` at its own position; True when there was none."""
    unknown = [k for k in raw if k not in allowed]
    for k in unknown:
        error(raw.key_locs[k], f"unknown key '{show(k)}' in {what} (expected one of: {', '.join(allowed)})")
    return not unknown


def resolves(text: str) -> bool:
    """Whether a plain scalar may be other than its text (the composer inlines this test: its hot loop)."""
    return text[:1] in _NUMBERISH or text in _SPECIAL


def plain_scalar(text: str) -> Any:
    """A plain (unquoted) scalar by YAML 1.2's core schema; anything else is the string itself."""
    if text in _SPECIAL:
        return _SPECIAL[text]
    first = text[0]
    if not (first.isascii() and (first.isdigit() or first in "+-.")):
        return text  # the common case (names, addresses, MACs) decided by one look
    if len(text) > MAX_NUMBER_DIGITS + 2 or ":" in text or text.count(".") > 1:
        return text  # an address, a MAC, a long string: no number has a ':' or two '.'
    if _INT.fullmatch(text):
        return int(text)
    if _INT_PREFIXED.fullmatch(text):
        return int(text, 0)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


class _Bound(Exception):
    """A bound broken while composing: reported as a located problem."""

    def __init__(self, mark: Any, message: str):
        super().__init__(message)
        self.mark, self.message = mark, message


def _loc(file: str, mark: Any) -> Loc:
    return Loc(file, mark.line + 1, mark.column + 1)


class _Composer:
    """Builds LDict/LList/scalars from parser events with an explicit stack."""

    def __init__(self, file: str, problems: list[Problem]):
        self.file, self.problems = file, problems
        self.anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, how many values it holds)
        self.alias_values = 0

    def compose(self, parser: Any, drop: Any = None) -> Any:
        """The document's tree. One pass over the events; the container being filled and its pending key are
        locals (a million entries run through this loop), pushed on `stack` when a child container opens."""
        file, problems, anchors = self.file, self.problems, self.anchors
        new_loc = tuple.__new__  # Loc(...) without NamedTuple's Python-level __new__
        scalar_event, alias_event = yaml.ScalarEvent, yaml.AliasEvent
        mapping_start, sequence_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
        mapping_end, sequence_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
        numberish, special = _NUMBERISH, _SPECIAL
        # The open container: itself, whether it is a list, its anchor, the value count when it opened (for the
        # size an alias of it adds), its pending key (_NO_KEY: none) and that key's Loc, its merge sources.
        parent: Any = None
        is_list = False
        anchor: str | None = None
        opened = 0
        key: Any = _NO_KEY
        key_at: Any = None
        merges: list | None = None
        stack: list[tuple] = []
        count = 0  # values composed so far, aliases counted by what they add
        root: Any = None
        documents = 0
        get = parser.get_event
        while True:
            ev = get()
            kind = type(ev)
            if kind is scalar_event:
                tag = ev.tag
                value = ev.value
                if tag is None:
                    if ev.style == "" and (value[:1] in numberish or value in special):  # resolves(value)
                        value = plain_scalar(value)
                elif tag != "!" and tag != _STR_TAG:
                    raise _Bound(ev.start_mark, f"tag '{show(tag)}' is not supported (quote a string instead)")
                count += 1
                if ev.anchor is not None:
                    anchors[ev.anchor] = (value, 1)
                mark = ev.start_mark
                at = new_loc(Loc, (file, mark.line + 1, mark.column + 1))
                done = value
            elif kind is mapping_start or kind is sequence_start:
                tag = ev.tag
                if tag is not None and tag != "!" and not tag.endswith((":map", ":seq")):
                    raise _Bound(ev.start_mark, f"tag '{show(tag)}' is not supported")
                if len(stack) >= MAX_DEPTH:
                    raise _Bound(ev.start_mark, f"nested more than {MAX_DEPTH} levels deep")
                stack.append((parent, is_list, anchor, opened, key, key_at, merges))
                mark = ev.start_mark
                if kind is mapping_start:
                    parent = LDict()
                    parent.key_locs, parent.val_locs = {}, {}
                    is_list = False
                else:
                    parent = LList()
                    parent.item_locs = []
                    is_list = True
                parent.loc = new_loc(Loc, (file, mark.line + 1, mark.column + 1))
                anchor, opened, key, key_at, merges = ev.anchor, count, _NO_KEY, None, None
                count += 1
                continue
            elif kind is mapping_end or kind is sequence_end:
                done, at = parent, parent.loc
                if merges:
                    self._merge(done, merges)
                if anchor is not None:
                    anchors[anchor] = (done, count - opened)
                parent, is_list, anchor, opened, key, key_at, merges = stack.pop()
            elif kind is alias_event:
                if ev.anchor not in anchors:
                    raise _Bound(ev.start_mark, f"alias '*{show(ev.anchor)}' names no anchor before it "
                                                "(an alias cannot refer to the value that contains it)")
                done, size = anchors[ev.anchor]
                count += size
                self.alias_values += size
                if self.alias_values > MAX_ALIAS_VALUES:
                    raise _Bound(ev.start_mark, f"aliases expand to more than {MAX_ALIAS_VALUES} values")
                mark = ev.start_mark
                at = new_loc(Loc, (file, mark.line + 1, mark.column + 1))
            elif kind is yaml.DocumentStartEvent:
                if documents:
                    raise _Bound(ev.start_mark, "the file holds more than one YAML document; keep one")
                documents += 1
                continue
            elif kind is yaml.StreamEndEvent:
                return root
            else:  # StreamStart, DocumentEnd
                continue
            # `done` stands at `at`: a collection where it began, a scalar or an alias where it is written.
            if parent is None:
                root = done
            elif is_list:
                parent.append(done)
                parent.item_locs.append(at)
            elif key is _NO_KEY:
                if isinstance(done, (LDict, LList)):
                    raise _Bound(ev.start_mark, "a key must be a plain value")
                key, key_at = done, at
            else:
                if key == _MERGE:
                    if merges is None:
                        merges = []
                    merges.extend(self._merge_sources(done, ev.start_mark))
                elif key in parent:
                    if len(problems) >= MAX_PROBLEMS:  # a file of a million duplicates: the first ones do
                        raise _Bound(ev.start_mark, f"more than {MAX_PROBLEMS} duplicate keys; stopped reading here")
                    problems.append(Problem(key_at, f"duplicate key '{show(key)}' "
                                            f"(first at line {parent.key_locs[key].line})"))
                elif drop is not None and len(stack) == 1 and key not in drop:
                    # A section the reader does not know: only reported, so its content is not kept (10 MB of
                    # junk keys would otherwise be a tree of a million values).
                    parent[key] = None
                    parent.key_locs[key] = parent.val_locs[key] = key_at
                else:
                    parent[key] = done
                    parent.key_locs[key] = key_at
                    parent.val_locs[key] = at
                key = _NO_KEY

    def _merge_sources(self, value: Any, mark: Any) -> list[LDict]:
        items = value if isinstance(value, LList) else [value]
        if not items or not all(isinstance(m, LDict) for m in items):
            raise _Bound(mark, "a merge key '<<' takes a mapping or a list of mappings")
        return list(items)

    @staticmethod
    def _merge(out: LDict, sources: list[LDict]) -> None:
        """YAML's merge: keys of the mapping itself win, then the sources in the order given."""
        for src in sources:
            for key, value in src.items():
                if key not in out:
                    out[key] = value
                    out.key_locs[key] = src.key_locs[key]
                    out.val_locs[key] = src.val_locs[key]


_NO_KEY = object()


def load_located(path: str, text: str, sections: Any = None) -> tuple[Any, list[Problem]]:
    """Parse YAML text into LDict/LList/scalars; syntax errors and broken bounds become problems, never
    exceptions. `sections`: the top-level keys whose values to keep (others are kept as None)."""
    problems: list[Problem] = []
    parser = None
    try:
        parser = _Parser(text)
        root = _Composer(path, problems).compose(parser, sections)
        return (LDict() if root is None else root), problems
    except _Bound as exc:
        return None, problems + [Problem(_loc(path, exc.mark), exc.message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _loc(path, mark) if mark else Loc(path, 1, 1)
        return None, [Problem(where, f"YAML syntax: {escape(str(exc.problem or exc.context))}")]
    except yaml.reader.ReaderError as exc:
        return None, [Problem(_offset_loc(path, text, exc.position),
                              f"YAML: {escape(str(exc.reason))} (character #x{_code(exc.character):02x})")]
    except (yaml.YAMLError, ValueError) as exc:
        return None, [Problem(Loc(path, 1, 1), f"YAML: {escape(' '.join(str(exc).split()))}")]
    finally:
        if parser is not None and hasattr(parser, "dispose"):
            parser.dispose()


def _code(character: Any) -> int:
    return character if isinstance(character, int) else ord(character) if character else 0


def _offset_loc(path: str, text: str, position: int) -> Loc:
    """Where libyaml's reader stopped: it counts bytes of the UTF-8 text (PyYAML's own reader, characters)."""
    before = text.encode("utf-8")[:position].decode("utf-8", errors="ignore") if _Parser.__module__ == \
        "yaml._yaml" else text[:position]
    line = before.count("\n") + 1
    return Loc(path, line, len(before) - (before.rfind("\n") + 1) + 1)
