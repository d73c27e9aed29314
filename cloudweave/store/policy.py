"""The policy in the store: every file of a configuration (the main file and its includes), packed into one
`Policy` row, and unpacked by each replica into a directory it compiles from.

The files travel as one JSON document cut into strings of CHUNK characters: python-ovs from PyPI parses JSON
in pure Python, where one long string costs superlinear time (1 MB in one string ~7 s, as 10,000 short ones
~0.2 s, measured when the store was designed: docs/replicas.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

CHUNK = 2048


@dataclass(frozen=True)
class PolicyFiles:
    """A configuration as text: `main` and every file, by path relative to the files' common directory."""

    main: str
    files: tuple[tuple[str, str], ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.document().encode()).hexdigest()

    def document(self) -> str:
        return json.dumps({"main": self.main, "files": dict(self.files)}, sort_keys=True, separators=(",", ":"))

    def chunks(self) -> dict[int, str]:
        doc = self.document()
        return {i // CHUNK: doc[i:i + CHUNK] for i in range(0, len(doc), CHUNK)}


def read_files(main: str, paths: tuple[str, ...]) -> PolicyFiles:
    """The files of a loaded model (`model.files`, the main file first) as text."""
    paths = tuple(os.path.realpath(p) for p in paths) or (os.path.realpath(main),)
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    files = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            files.append((os.path.relpath(p, root), fh.read()))
    return PolicyFiles(os.path.relpath(os.path.realpath(main), root), tuple(sorted(files)))


def from_chunks(chunks: dict[int, str]) -> PolicyFiles:
    doc = json.loads("".join(chunks[i] for i in sorted(chunks)))
    return PolicyFiles(doc["main"], tuple(sorted(doc["files"].items())))


def write_out(policy: PolicyFiles, directory: str) -> str:
    """Write the files under `directory` (each replaced whole, only when it differs); the main file's path."""
    for rel, text in policy.files:
        path = os.path.join(directory, rel)
        if os.path.commonpath([os.path.realpath(directory), os.path.realpath(path)]) != os.path.realpath(directory):
            raise ValueError(f"policy file '{rel}' lies outside {directory}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path, encoding="utf-8") as fh:
                if fh.read() == text:
                    continue
        except OSError:
            pass
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".policy-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return os.path.join(directory, policy.main)
