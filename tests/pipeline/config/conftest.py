"""The config tests' working directory fixture lives with the shared cases."""

from tests.pipeline.config.cases import ws  # noqa: F401  (the fixture)
