"""mkd-pipeline: the system around :mod:`maskedkd` (shards, label store, Dask precompute, trainer, CLI).

The CLI (``mkd-pipeline``) is this package's public API; modules here may change between versions.
"""

__version__ = "0.2.0"
