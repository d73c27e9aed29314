"""Configuration: YAML files with positions -> a typed, immutable model."""

from cloudweave.config.errors import ConfigError, Problem
from cloudweave.config.load import LoadCache, load_model, load_model_cached

__all__ = ["ConfigError", "LoadCache", "Problem", "load_model", "load_model_cached"]
