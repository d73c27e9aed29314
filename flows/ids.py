"""Numeric ids for named things on one switch: a hash of the name, probed on collision (as OVN's
lib/lflow-conj-ids.c), so that ids stay put when other things come and go and two things never share one.

The allocation is a pure function of the set of names: the same names give the same ids in every run and on
every replica, and an incremental compile gives what a compile from scratch gives. Names are served in the
order of (hash, name); a name whose hash is taken moves to the next free value. So an id changes only when a
new name lands on the same hash and sorts first: with 24 bits and 1,000 names at a site, about one new name
in 17,000.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping


def allocate(names: Mapping[str, int], space: int, valid: Callable[[int], bool] = lambda _: True) -> dict[str, int]:
    """`names`: name -> its preferred id (its hash), each in range(space); ids for which `valid` is false are
    skipped (e.g. 0). Raises ValueError when the space is full."""
    if len(names) > space:
        raise ValueError(f"{len(names)} ids wanted in a space of {space}")
    taken: set[int] = set()
    out: dict[str, int] = {}
    for name, want in sorted(names.items(), key=lambda item: (item[1], item[0])):
        value = want % space
        while value in taken or not valid(value):
            value = (value + 1) % space
        taken.add(value)
        out[name] = value
    return out
