"""Configuration: YAML files with positions -> a typed, immutable model."""

from cloudweave.config.errors import ConfigError, Problem
from cloudweave.config.load import load_model

__all__ = ["ConfigError", "Problem", "load_model"]
