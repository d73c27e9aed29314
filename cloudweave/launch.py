"""How cloudweave starts its own Python processes (the controller, the test bed's keeper, probes, loads).

`python -P -m MODULE`: -P keeps the working directory off sys.path. Started from inside a checkout, a plain
`python -m` imports the source tree's `cloudweave/`, which does not hold `cloudweave.flows` and
`cloudweave.testbed` (they live in `flows/` and `mininet/testbed/`, mapped at install), and fails.
"""

from __future__ import annotations

import sys

PYTHON_M = (sys.executable, "-P", "-m")

