"""What the test-bed benchmarks share: a topology of topologies/ brought up in a fresh directory (sockets
moved there), torn down whatever happens, and edits of its live file (the controller reloads them)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cloudweave.config import load_model  # noqa: E402
from cloudweave.testbed.cli import down, up  # noqa: E402
from cloudweave.testbed.state import State  # noqa: E402
from testkit.harness import rewrite_topology  # noqa: E402


@contextmanager
def running(topology: str, edit: Callable[[dict], None] | None = None,
            replicas: int = 0) -> Iterator[tuple[str, dict]]:
    """Bring up topologies/<topology>.yaml (after `edit` of its document); yield the work directory and the
    document as written."""
    workdir = tempfile.mkdtemp(prefix=f"cw-{topology}-")
    src = os.path.join(ROOT, "topologies", f"{topology}.yaml")
    model = load_model(src)[0]
    config = os.path.join(workdir, f"{topology}.yaml")
    doc = rewrite_topology(src, config, {s.name: os.path.join(workdir, s.name) for s in model.sites}, edit=edit)
    if up(config, workdir, metrics="off", replicas=replicas) != 0:
        sys.exit(f"test bed did not come up; see {workdir}/testbed.log")
    try:
        yield workdir, doc
    finally:
        down(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def edit_live(workdir: str, edit: Callable[[dict], None], settle_s: float = 2.5) -> None:
    """Change the running test bed's file in one atomic replace, and give the controller time to reload."""
    path = State.load(workdir).topology
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    edit(doc)
    with open(path + ".tmp", "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.replace(path + ".tmp", path)
    time.sleep(settle_s)
