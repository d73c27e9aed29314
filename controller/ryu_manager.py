"""`ryu-manager`: Ryu's command, for the operator who runs `ryu-manager controller.app` next to OVS.

Ryu itself does not run on Python 3.11; os-ken is the maintained Ryu, and this is its manager under Ryu's name,
with the same options (`--ofp-listen-host`, `--ofp-tcp-listen-port`, `--config-file`, `--verbose`, ...; see
`ryu-manager --help`). The application reads its file from CLOUDWEAVE_CONFIG, as under `osken-manager`.
"""

from __future__ import annotations

import sys


def main() -> int:
    from os_ken.cmd.manager import main as osken_main

    sys.argv[0] = "ryu-manager"  # --help and messages name the command the user typed
    return osken_main()


if __name__ == "__main__":
    sys.exit(main())
