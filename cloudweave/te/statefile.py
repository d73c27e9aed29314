"""The traffic-engineering state file (controller.te_loop writes it): read back only when it is what the
controller writes, field by field; anything else is refused with a message naming the field."""

from __future__ import annotations

import json
import math
from typing import Any

from cloudweave.config.files import Unreadable, read_text
from cloudweave.config.yamlpos import show

MAX_STATE_BYTES = 64 << 20


class BadState(ValueError):
    """The state file is not one the controller wrote; the message says where it differs."""


def _number(value: Any, where: str, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadState(f"{where}: expected a finite number, got {show(value)}")


def _text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise BadState(f"{where}: expected a string, got {show(value)}")


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise BadState(f"{where}: expected an object, got {show(value)}")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise BadState(f"{where}: expected a list, got {show(value)}")
    return value


def _predictor(value: Any, where: str) -> None:
    pred = _mapping(value, where)
    _number(pred.get("mean"), f"{where}.mean", none=True)
    _number(pred.get("dev", 0.0), f"{where}.dev")
    _number(pred.get("spread", 0.0), f"{where}.spread")
    for key in ("n", "spread_n"):
        n = pred.get(key, 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise BadState(f"{where}.{key}: expected a count, got {show(n)}")


def validate(doc: Any) -> dict:
    """`doc` itself when it has the controller's shape; BadState otherwise."""
    doc = _mapping(doc, "the file")
    for key in ("updated", "poll_interval_s"):
        _number(doc.get(key), key, none=True)
    for i, item in enumerate(_list(doc.get("keys", []), "keys")):
        where = f"keys[{i}]"
        item = _mapping(item, where)
        for key in ("route", "src", "dst"):
            _text(item.get(key), f"{where}.{key}")
        paths = _list(item.get("paths") or [], f"{where}.paths")
        for j, path in enumerate(paths):
            for k, site in enumerate(_list(path, f"{where}.paths[{j}]")):
                _text(site, f"{where}.paths[{j}][{k}]")
        shares = item.get("shares")
        if shares is not None:
            for j, share in enumerate(_list(shares, f"{where}.shares")):
                _number(share, f"{where}.shares[{j}]")
            if shares and len(shares) != len(paths):
                raise BadState(f"{where}: {len(shares)} shares for {len(paths)} paths")
        if item.get("predictor") is not None:
            _predictor(item["predictor"], f"{where}.predictor")
        _number(item.get("rate"), f"{where}.rate", none=True)
    for link, item in _mapping(doc.get("background") or {}, "background").items():
        where = f"background.{show(link)}"
        if "->" not in link:
            raise BadState(f"{where}: expected a link as 'site->site'")
        _predictor(item, where)
        _number(item.get("rate"), f"{where}.rate", none=True)
    for key in ("capacity_bps", "utilisation"):
        for link, value in _mapping(doc.get(key) or {}, key).items():
            _number(value, f"{key}.{show(link)}")
    if doc.get("mlu") is not None:
        mlu = _mapping(doc["mlu"], "mlu")
        for key in ("proposed", "in_force"):
            _number(mlu.get(key), f"mlu.{key}")
    return doc


def load_state(path: str) -> dict:
    """The state at `path`, validated; FileNotFoundError when there is none, BadState when it is not one."""
    try:
        text = read_text(path, MAX_STATE_BYTES)
    except Unreadable as exc:
        if "No such file" in str(exc):
            raise FileNotFoundError(path) from None
        raise BadState(str(exc)) from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadState(f"not JSON ({exc.__class__.__name__}: {show(str(exc))})") from None
    return validate(doc)
