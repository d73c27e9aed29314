"""YAML loading that keeps the file, line and column of every key and value."""

from __future__ import annotations

from typing import Any

import yaml

from cloudweave.config.errors import Loc, Problem

# libyaml's parser when PyYAML has it: the same nodes and marks, several times faster on large files.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LDict(dict):
    """A mapping that remembers where each key and value stood."""

    loc: Loc
    key_locs: dict[Any, Loc]
    val_locs: dict[Any, Loc]


def known_keys(raw: LDict, allowed: Any, what: str, error: Any) -> bool:
    """Report every key of `raw` that is not in `allowed` at its own position; True when there was none."""
    unknown = [k for k in raw if k not in allowed]
    for k in unknown:
        error(raw.key_locs[k], f"unknown key '{k}' in {what} (expected one of: {', '.join(allowed)})")
    return not unknown


class LList(list):
    """A sequence that remembers where each item stood."""

    loc: Loc
    item_locs: list[Loc]


def _loc(file: str, node: yaml.Node) -> Loc:
    return Loc(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(loader: yaml.SafeLoader, file: str, node: yaml.Node, problems: list[Problem]) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out = LDict()
        out.loc, out.key_locs, out.val_locs = _loc(file, node), {}, {}
        for key_node, value_node in node.value:
            key = _convert(loader, file, key_node, problems)
            if isinstance(key, (LDict, LList)):
                problems.append(Problem(_loc(file, key_node), "a key must be a plain value"))
                continue
            if key in out:
                problems.append(Problem(_loc(file, key_node),
                                        f"duplicate key '{key}' (first at line {out.key_locs[key].line})"))
                continue
            out[key] = _convert(loader, file, value_node, problems)
            out.key_locs[key] = _loc(file, key_node)
            out.val_locs[key] = _loc(file, value_node)
        return out
    if isinstance(node, yaml.SequenceNode):
        out_list = LList(_convert(loader, file, item, problems) for item in node.value)
        out_list.loc = _loc(file, node)
        out_list.item_locs = [_loc(file, item) for item in node.value]
        return out_list
    return loader.construct_object(node, deep=True)


def load_located(path: str, text: str) -> tuple[Any, list[Problem]]:
    """Parse YAML text into LDict/LList/scalars; syntax errors become problems, never exceptions."""
    problems: list[Problem] = []
    loader = LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return LDict(), problems
        return _convert(loader, path, node, problems), problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Loc(path, mark.line + 1, mark.column + 1) if mark else Loc(path, 1, 1)
        return None, [Problem(where, f"YAML syntax: {exc.problem or exc.context}")]
    except (yaml.YAMLError, ValueError) as exc:
        return None, [Problem(Loc(path, 1, 1), f"YAML: {exc}")]
    finally:
        loader.dispose()
