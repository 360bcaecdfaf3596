"""The features stage: radiomics and ResNet34 features of every ingested study version.

Science (pure, no Dask): :mod:`features.radiomics`, :mod:`features.deep`, :mod:`features.versioning`.
Per-task functions a worker runs: :mod:`features.tasks`. The driver: :mod:`features.job` runs
:mod:`~features.context` (the recipe and run context), :mod:`~features.plan` (what is missing),
:mod:`~features.compute` (Dask), :mod:`~features.collect` (Parquet + lineage) and
:mod:`~features.register` (clinical export, Feast).
"""
