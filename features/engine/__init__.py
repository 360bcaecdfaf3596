"""ATRX's own radiomics engine: pyradiomics 3.0.1's features, computed faster, same keys and values."""

from features.engine.extract import extract

__all__ = ["ENGINE_NAME", "ENGINE_VERSION", "extract"]

ENGINE_NAME = "atrx"
ENGINE_VERSION = "0.1.1"
# 0.1.1: MCC's symmetric shortcut and the GLSZM/GLDM matrix features run in numba (index-order
# sums); their values differ from 0.1.0's by at most ~6e-15 relative, every other feature is the
# same bits. A new version keeps the two apart in Feast all the same.
