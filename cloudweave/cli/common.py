"""What the subcommands share."""

from __future__ import annotations

import sys

from cloudweave.config import ConfigError, load_model
from cloudweave.config.model import Model


def load_reported(path: str) -> tuple[Model | None, int]:
    """The model of `path`, its warnings printed; or None and exit code 1, each problem printed (file:line:col)."""
    try:
        model, warnings = load_model(path)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        print(f"{path}: {exc.total} problem(s)", file=sys.stderr)
        return None, 1
    for w in warnings:
        print(w, file=sys.stderr)
    return model, 0
