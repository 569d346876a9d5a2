"""``mkd-pipeline config check``."""

from __future__ import annotations

import click

from pipeline._cli_options import set_opt
from pipeline.config.loader import dump_config, load_config


@click.command("check")
@click.argument("stages", metavar="STAGES.yaml")
@click.option("--no-files", is_flag=True, help="Do not check that the dataset and weights files exist.")
@set_opt
def config_check(stages: str, no_files: bool, overrides: tuple[str, ...]) -> None:
    """Validate a stage config and print it resolved (defaults filled in, paths absolute)."""
    cfg = load_config(stages, check_files=not no_files, overrides=overrides)
    click.echo(dump_config(cfg, overrides), nl=False)
