"""Problems found in configuration files, each pointing at a file, line and column."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def escape(text: str) -> str:
    """`text` with every character that could break or disguise a line written as an escape."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class Loc(NamedTuple):
    """A place in a configuration file (1-based line and column). A tuple: a file of 100,000 entries has a
    million of them, and a tuple is made several times faster than a frozen dataclass."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, order=True)
class Problem:
    loc: Loc
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return escape(f"{self.loc}: {prefix}{self.message}")  # one line per problem, whatever the user wrote


class ConfigError(Exception):
    """Raised when configuration files hold one or more errors; carries every problem."""

    def __init__(self, problems: list[Problem], total: int | None = None):
        self.problems = sorted(problems)
        self.total = len(self.problems) if total is None else total  # also those not kept (a last one says so)
        super().__init__("\n".join(str(p) for p in self.problems))


class Invalid(ValueError):
    """Raised by a value converter; the caller attaches the location."""
