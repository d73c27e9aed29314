"""The process that holds a running test bed: builds it, reports ready in the state file, tears down on SIGTERM.

Mininet hosts live as long as the shells that hold their namespaces, so something must keep running after
`cloudweave testbed up` returns: this process, started in its own session.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback

from cloudweave.config import ConfigError, load_model
from cloudweave.testbed.build import Testbed
from cloudweave.testbed.cleanup import force_cleanup
from cloudweave.testbed.state import State


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="testbed-keeper")
    p.add_argument("topology")
    p.add_argument("--workdir", required=True)
    p.add_argument("--controller", default=None)
    p.add_argument("--metrics", default="127.0.0.1:9108")
    p.add_argument("--replicas", type=int, default=0)
    p.add_argument("--tls", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = State(workdir=os.path.abspath(args.workdir), topology=os.path.abspath(args.topology),
                  keeper_pid=os.getpid())
    state.save()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    bed = None
    try:
        model, _ = load_model(state.topology)
        bed = Testbed(model, state)
        bed.build(args.controller, args.metrics, args.replicas, args.tls)
        bed.wait_for_flows()
    except (ConfigError, Exception) as exc:  # noqa: BLE001 - report any failure through the state file
        traceback.print_exc()
        logging.error("test bed failed: %s", exc)  # `up` quotes this line (the state file goes with the teardown)
        state.status, state.error = "failed", str(exc)
        state.save()
        if bed is not None:
            bed.teardown()
        force_cleanup(state)
        return 1
    state.status = "ready"
    state.save()
    logging.info("test bed ready")
    stop.wait()
    state = State.load(state.workdir) or state  # others may have added to it (a replica started again)
    bed.state = state
    state.status = "stopping"
    state.save()
    bed.teardown()
    force_cleanup(state)
    logging.info("test bed down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
