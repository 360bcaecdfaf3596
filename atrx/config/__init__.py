"""Configuration models (YAML -> pydantic) shared by the stages."""

from atrx.config.base import ConfigError, load_yaml_model

__all__ = ["ConfigError", "load_yaml_model"]
