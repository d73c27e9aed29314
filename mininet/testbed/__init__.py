"""The emulated test bed: one OVS instance per site in its own namespace, endpoints as Mininet hosts.

The folder is `mininet/` in the tree but the package is `testbed` (setup.cfg maps it), so it never shadows
the real `mininet` package.
"""
