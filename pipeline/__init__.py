"""mkd-pipeline: the system around :mod:`maskedkd` (shards, label store, Dask precompute, trainer, CLI).

Public: the CLI (``mkd-pipeline``) and the dataset that streams a run's stored labels into any
training loop, :class:`LabeledViews` (with :class:`LabeledView` and :func:`collate`; README
"Use the labels in your own training loop"). Other modules may change between versions.
"""

from typing import Any

from pipeline._version import __version__

__all__ = ["LabeledView", "LabeledViews", "collate", "__version__"]


def __getattr__(name: str) -> Any:
    # lazy: `mkd-pipeline --help` imports this package; the dataset would pull in torch
    if name in {"LabeledView", "LabeledViews", "collate"}:
        from pipeline.train import labeled_views

        return getattr(labeled_views, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
