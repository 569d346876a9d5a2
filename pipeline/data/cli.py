"""``mkd-pipeline data import ...`` and ``mkd-pipeline data verify``."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.data.importers import (
    FASHION_MNIST_SRC,
    import_fashion_mnist,
    import_imagefolder,
)
from pipeline.data.verify import verify_dataset
from pipeline.errors import PipelineError

_DIR = click.Path(file_okay=False, path_type=Path)


def _summary(manifest, out: Path) -> None:
    for split in sorted(manifest.splits):
        shards = manifest.shards(split)
        size = sum(s.bytes for s in shards) / 1e6
        click.echo(f"  {split}: {manifest.num_samples(split):,} samples in {len(shards)} shards ({size:,.1f} MB)")
    if manifest.skipped:
        click.echo(f"  skipped {len(manifest.skipped)} source file(s), listed under 'skipped' in {out / 'manifest.json'}:")
        for s in manifest.skipped[:10]:
            click.echo(f"    {s['split']}: {s['source']}: {s['reason']}")
    click.echo(f"wrote {out / 'manifest.json'} and {out / '_info.json'}")


@click.group("import")
def data_import() -> None:
    """Import a dataset as deterministic WebDataset shards plus a manifest."""


@data_import.command("fashion-mnist")
@click.option("--out", required=True, type=_DIR, help="Dataset folder to write (created if missing).")
@click.option("--src", default=FASHION_MNIST_SRC, show_default=True, type=_DIR,
              help="Folder with the four IDX .gz files (Debian package dataset-fashion-mnist).")
@click.option("--shard-size", default=5000, show_default=True, type=click.IntRange(min=1), help="Samples per shard.")
def import_fashion_mnist_cmd(out: Path, src: Path, shard_size: int) -> None:
    """Fashion-MNIST (60,000 train, 10,000 test) as lossless PNG shards."""
    click.echo(f"importing Fashion-MNIST from {src} into {out} ...")
    _summary(import_fashion_mnist(out, src=src, shard_size=shard_size, progress=True), out)


@data_import.command("imagefolder")
@click.argument("src", type=_DIR)
@click.option("--out", required=True, type=_DIR, help="Dataset folder to write (other splits in it are kept).")
@click.option("--split", required=True, help="Split to write, e.g. train or val (letters and digits).")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1), help="Samples per shard.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sample order (shards mix classes).")
@click.option("--name", default=None, help="Dataset name [default: SRC's folder name].")
def import_imagefolder_cmd(src: Path, out: Path, split: str, shard_size: int, seed: int, name: str | None) -> None:
    """An ImageNet-style folder (SRC/<class>/<image>), image bytes copied as they are."""
    click.echo(f"importing {src} as split {split!r} into {out} ...")
    _summary(import_imagefolder(src, out, split, shard_size=shard_size, seed=seed, name=name, progress=True), out)


@click.command("verify")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--decode", is_flag=True, help="Also decode every image (finds corrupt images; slower).")
def data_verify(directory: str, decode: bool) -> None:
    """Re-hash every shard of DIR (a folder, or a URI such as s3://bucket/data) against its manifest
    and re-count its samples.

    Exits 0 when everything matches, 1 listing each problem otherwise, 3 when the manifest
    itself is missing or invalid.
    """
    problems = verify_dataset(directory, decode=decode, progress=click.echo)
    if problems:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        raise PipelineError(f"{len(problems)} problem(s) in {directory}", exit_code=1)
    click.echo(f"{directory}: all shards match the manifest" + (" and decode" if decode else ""))
