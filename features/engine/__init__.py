"""ATRX's own radiomics engine: pyradiomics 3.0.1's features, computed faster, same keys and values."""

from features.engine.extract import extract

__all__ = ["ENGINE_NAME", "ENGINE_VERSION", "extract"]

ENGINE_NAME = "atrx"
ENGINE_VERSION = "0.1.0"
