"""Stage config: the YAML schema of a pipeline run and its loader (docs/design.md §2, §6).

One entry point, :func:`load_config`, reads a stage YAML file and returns a validated
:class:`StageConfig`, or raises :class:`~pipeline.errors.ConfigError` (exit code 2) whose
message names the file and the dotted field of every problem, e.g.::

    stages/x.yaml: masking.keep: must be between 1 and 196 (the teacher's patches), got 300

Loading writes nothing. Every section forbids unknown keys. Models are validated against timm's
registry and instantiated on the ``meta`` device (no memory, no weights) to learn their patch
grid, channels and classes; creating real models is :mod:`pipeline.models`' job.

Conventions:

- Relative paths (``data.root``, weights files, ``run_dir``, ``labels.store``) are resolved
  against the current working directory when the config is loaded and stored absolute.
- ``compute.scheduler: null`` is filled from the environment variable ``MKD_SCHEDULER`` by
  :func:`load_config`; without either, the runner starts a local cluster.
- YAML booleans are only ``true``/``false`` (YAML 1.2): ``kd: off`` is the string ``"off"``.
  Duplicate keys are an error.

``--set section.field=value`` (repeatable; ``load_config(path, overrides=[...])``) changes the
document before validation, so an override is checked like the file and changes the config (and
so the fingerprints) like an edit of the file would.

``mkd-pipeline config check STAGES.yaml [--no-files] [--set ...]`` validates a file and prints the
resolved config, which loads again unchanged.
"""

from pipeline.config.compute import ComputeConfig
from pipeline.config.data_views import DataConfig, ViewsConfig
from pipeline.config.labelling import LabelsConfig, MaskingConfig, ScheduleConfig
from pipeline.config.loader import dump_config, load_config, parse_override, set_fields
from pipeline.config.model_info import ModelInfo, model_info
from pipeline.config.model_sections import StudentConfig, TeacherConfig
from pipeline.config.recipe import TeacherTrainConfig, TrainConfig
from pipeline.config.schema import StageConfig

__all__ = [
    "ComputeConfig",
    "DataConfig",
    "LabelsConfig",
    "MaskingConfig",
    "ModelInfo",
    "ScheduleConfig",
    "StageConfig",
    "StudentConfig",
    "TeacherConfig",
    "TeacherTrainConfig",
    "TrainConfig",
    "ViewsConfig",
    "dump_config",
    "load_config",
    "model_info",
    "parse_override",
    "set_fields",
]
