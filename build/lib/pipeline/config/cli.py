"""``mkd-pipeline config check``."""

from __future__ import annotations

import click

from pipeline.config.loader import dump_config, load_config


@click.command("check")
@click.argument("stages", metavar="STAGES.yaml")
@click.option("--no-files", is_flag=True, help="Do not check that the dataset and weights files exist.")
def config_check(stages: str, no_files: bool) -> None:
    """Validate a stage config and print it resolved (defaults filled in, paths absolute)."""
    click.echo(dump_config(load_config(stages, check_files=not no_files)), nl=False)
