"""cloudweave: an OpenFlow controller for multi-site Open vSwitch overlays."""

__version__ = "0.1.0"
