"""The package's version, where any layer may read it (``pipeline/__init__.py`` would pull in the trainer's exports)."""

__version__ = "0.2.0"
