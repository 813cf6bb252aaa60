"""Shared body of the catalog_import and photos_import commands."""

from pathlib import Path

from django.core.management.base import CommandError
from tqdm import tqdm

from catalog.services import ManifestError


def run_import(command, import_fn, path: str) -> None:
    """Run `import_fn(path=..., progress=...)` with a progress bar, print the report, and exit non-zero
    (CommandError) when any row failed, after importing all good rows."""
    manifest = Path(path)
    try:
        with manifest.open("rb") as fh:
            total = max(sum(1 for line in fh if line.strip()) - (manifest.suffix.lower() == ".csv"), 0)
    except OSError as exc:
        raise CommandError(f"cannot read {manifest}: {exc.strerror or exc}") from exc
    with tqdm(total=total, unit="row", desc=manifest.name, disable=None, file=command.stderr._out) as bar:
        try:
            report = import_fn(path=manifest, progress=bar.update)
        except ManifestError as exc:
            raise CommandError(str(exc)) from exc
    for error in report.errors:
        command.stderr.write(f"{manifest.name}: {error}")
    command.stdout.write(
        f"{manifest.name}: {report.created_count} created, {report.updated_count} updated, "
        f"{report.unchanged_count} unchanged, {len(report.errors)} failed"
    )
    if report.errors:
        raise CommandError(f"{len(report.errors)} row(s) failed; the other rows were imported")
