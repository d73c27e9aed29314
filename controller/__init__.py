"""The thin shell: talks OpenFlow (os-ken) and OVSDB, diffs desired against actual, and applies."""

import warnings

# python-ovs imports eventlet only to ask whether eventlet patched `select` (ovs/poller.py), and eventlet warns
# on import that it is deprecated: a warning about a library we do not use, at every start.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
