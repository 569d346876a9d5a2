"""Click options shared by commands of several packages. Light: ``mkd-pipeline --help`` imports it."""

from __future__ import annotations

import click

set_opt = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
    help="Override one field of the stage file (repeatable), validated like the file; the value is YAML "
         "(--set train.lr=5e-4 --set views.scale=[0.6,1.0]).",
)
