"""ATRX Fusion: shared contracts (workspace layout, names, configuration loading) and the CLI.

Stage packages (``ingest``, ``features``, ``training``, ``serving``) own their steps; what they
agree on lives here so that no stage imports another stage's internals.
"""

__version__ = "0.1.0"
