"""The quarantine list: endpoints cut off at their site, kept in a JSON file beside the configuration (alone),
or in the replicated store (replicas: `cloudweave.secops.stored`, the same entries as rows).

The controller follows the list (it notices every change within a tick) and the quarantined endpoints are an
input of the compiler, so no reconcile or restart undoes them. Writers of the file (`cloudweave quarantine`,
the controller's detector) change it under a lock and replace it whole, so a reader never sees half a file.

    {"version": 1, "entries": [{"endpoint": "web1", "reason": "...", "source": "cli", "since": 1764600000.0,
                                "until": 1764600900.0, "evidence": {...}}]}
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

VERSION = 1
MAX_BYTES = 16 << 20
MAX_REASON = 500


class QuarantineFileError(ValueError):
    """The quarantine file cannot be read as one: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Entry:
    endpoint: str
    reason: str
    source: str  # cli | auto
    since: float  # seconds since the epoch
    until: float | None = None  # None: until released
    evidence: dict = field(default_factory=dict, compare=False, hash=False)

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


def make(endpoint: str, reason: str, source: str, hold_s: float | None = None,
         evidence: dict[str, Any] | None = None, now: float | None = None) -> Entry:
    """An entry made now (`now`), held `hold_s` (None: until released)."""
    now = time.time() if now is None else now
    return Entry(endpoint, reason[:MAX_REASON], source, now, None if hold_s is None else now + hold_s,
                 dict(evidence or {}))


def with_entry(entries: tuple[Entry, ...], entry: Entry) -> tuple[Entry, ...]:
    """The list with `entry` in it, replacing its endpoint's earlier entry."""
    return tuple(e for e in entries if e.endpoint != entry.endpoint) + (entry,)


def load(path: str) -> tuple[Entry, ...]:
    """The entries of the file; none when it does not exist."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise QuarantineFileError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise QuarantineFileError(f"{path}: larger than {MAX_BYTES >> 20} MiB")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuarantineFileError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("entries"), list):
        raise QuarantineFileError(f"{path}: expected {{\"version\": {VERSION}, \"entries\": [...]}}")
    out = []
    for i, raw in enumerate(doc["entries"]):
        try:
            e = Entry(str(raw["endpoint"]), str(raw.get("reason", ""))[:MAX_REASON], str(raw.get("source", "cli")),
                      float(raw["since"]), None if raw.get("until") is None else float(raw["until"]),
                      dict(raw.get("evidence") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise QuarantineFileError(f"{path}: entry {i + 1}: {exc!r}") from None
        out.append(e)
    return tuple(out)


def active(entries: tuple[Entry, ...], now: float | None = None) -> frozenset[str]:
    """The endpoints quarantined at `now`."""
    now = time.time() if now is None else now
    return frozenset(e.endpoint for e in entries if e.active(now))


def next_expiry(entries: tuple[Entry, ...], now: float) -> float | None:
    """When the next active entry ends (None: none will)."""
    ends = [e.until for e in entries if e.until is not None and e.until > now]
    return min(ends) if ends else None


def update(path: str, change: Callable[[tuple[Entry, ...]], tuple[Entry, ...]]) -> tuple[Entry, ...]:
    """Read, change and write the file under an exclusive lock; entries that ended are dropped on the way."""
    directory = os.path.dirname(os.path.abspath(path))
    with open(os.path.join(directory, f".{os.path.basename(path)}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = time.time()
        entries = tuple(e for e in change(load(path)) if e.active(now))
        doc = {"version": VERSION, "entries": [asdict(e) for e in entries]}
        text = json.dumps(doc, indent=1, sort_keys=True)
        if len(text.encode()) > MAX_BYTES:
            # Written, it could not be read back: the next start would refuse it. The list stays as it was.
            raise QuarantineFileError(f"{path}: the list would pass {MAX_BYTES >> 20} MiB ({len(entries)} "
                                      "entries); not written")
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    return entries


def add(path: str, endpoint: str, reason: str, source: str, hold_s: float | None = None,
        evidence: dict[str, Any] | None = None, now: float | None = None) -> Entry:
    """Quarantine `endpoint` (again: the new entry replaces an old one)."""
    entry = make(endpoint, reason, source, hold_s, evidence, now)
    update(path, lambda es: with_entry(es, entry))
    return entry


def release(path: str, endpoint: str) -> bool:
    """Release `endpoint`; False when it was not quarantined."""
    found = []

    def change(es: tuple[Entry, ...]) -> tuple[Entry, ...]:
        found.extend(e for e in es if e.endpoint == endpoint and e.active(time.time()))
        return tuple(e for e in es if e.endpoint != endpoint)

    update(path, change)
    return bool(found)


def auto_refusal(entries: tuple[Entry, ...], now: float, most: int, allow_now: Callable[[], bool]) -> str | None:
    """Why a new automatic entry is not made ("total": `most` are in force; "per_minute": `allow_now()`, the
    budget of the last minute, says no), or None. A manual entry is never refused here."""
    if sum(1 for e in entries if e.source == "auto" and e.active(now)) >= most:
        return "total"
    return None if allow_now() else "per_minute"


def file_version(path: str) -> tuple[int, int, int] | None:
    """What tells one version of the file from the next (it is replaced whole): inode, size, mtime."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class FileList:
    """The list in the file at `path`: what `cloudweave quarantine` edits, and what a controller alone
    follows (by a stat per tick: `changed`)."""

    def __init__(self, path: str):
        self.path = path
        self.version = file_version(path)

    @property
    def where(self) -> str:
        return self.path

    def load(self) -> tuple[Entry, ...]:
        """The list as it is now (QuarantineFileError: the file cannot be read as one)."""
        self.version = file_version(self.path)
        return load(self.path)

    read = load

    def changed(self) -> tuple[Entry, ...] | None:
        """The list, when the file changed since it was last read; else None."""
        return None if file_version(self.path) == self.version else self.load()

    def add(self, endpoint: str, reason: str, source: str, hold_s: float | None = None) -> Entry:
        return add(self.path, endpoint, reason, source, hold_s)

    def release(self, endpoint: str) -> bool:
        return release(self.path, endpoint)

    def write(self, entry: Entry, entries: tuple[Entry, ...]) -> tuple[Entry, ...]:
        """`entry` written in place of its endpoint's (OSError, QuarantineFileError: it was not); the list as
        written."""
        written = update(self.path, lambda es: with_entry(es, entry))
        self.version = file_version(self.path)
        return written

    def close(self) -> None:
        pass
