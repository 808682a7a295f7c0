"""``artifact-loop labels``: import label files, export a dataset's labels."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from server.cli.common import console, err_console, friendly_errors
from server.cli.common import runtime as _runtime
from server.errors import InvalidInput

# Service modules are imported inside the commands that use them: the database layer and
# the webknossos library take seconds to load, which `--help` and every other command
# would pay.

labels_app = typer.Typer(
    help="Import labels from webKnossos annotations and genEM3 files; export them.",
    no_args_is_help=True,
)


def _parse_type_map(entries: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for entry in entries:
        name, sep, kind = entry.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"--map {entry!r}: write NAME=TYPE, e.g. --map Scratsch=scratch")
        mapping[name.strip()] = kind.strip()
    return mapping


def _default_annotator(*, filename: str, data: bytes, type_map: dict[str, str]) -> str:
    """The annotation's owner when the file names one, else the person at the keyboard."""
    from server.labels.files import parse_label_file

    owner = parse_label_file(filename=filename, data=data, type_map=type_map).owner
    if owner:
        return owner
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (containers)
        return "file-import"


@labels_app.command("import")
@friendly_errors
def labels_import(
    file: Annotated[
        Path, typer.Argument(help="A webKnossos annotation (.nml, .zip) or genEM3 .json.")
    ],
    dataset: Annotated[str, typer.Option(help="Name or id of the dataset to import into.")],
    annotator: Annotated[
        str | None,
        typer.Option(
            help="Who gave the verdicts (default: the annotation's owner, else your user name). "
            "Names in the file, as in 'AK: debris', take precedence."
        ),
    ] = None,
    type_map: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="Map a name in the file to an artifact type, e.g. --map Scratsch=scratch "
            "(repeatable; TYPE 'none' means no type).",
        ),
    ] = None,
) -> None:
    """Import the labels of a file; importing it again adds nothing."""
    from sqlalchemy import select

    from server.datasets.service import get_dataset
    from server.db.base import write_transaction
    from server.db.tables import Annotator
    from server.jobs.queue import sender_for
    from server.labels.importer import import_label_file
    from server.labels.service import labels_arrived

    if not file.is_file():
        raise InvalidInput(f"{file} is not a file")
    data = file.read_bytes()
    mapping = _parse_type_map(type_map or [])
    name = annotator or _default_annotator(filename=file.name, data=data, type_map=mapping)
    runtime = _runtime()
    try:
        with write_transaction(runtime.sessions) as session:
            target = get_dataset(session, dataset)
            annotator_id = session.scalar(select(Annotator.id).where(Annotator.name == name))
            report = import_label_file(
                session,
                dataset=target,
                filename=file.name,
                data=data,
                annotator=name,
                annotator_id=annotator_id,
                type_map=mapping,
            )
            dataset_id = target.id
        training = (
            labels_arrived(runtime, sender_for(runtime.settings), dataset_id=dataset_id)
            if report.added
            else None
        )
    finally:
        runtime.close()

    console.print(f"{report.filename} -> dataset {report.dataset!r}", highlight=False)
    table = Table("labels", "added")
    for label, count in report.added_by_class.items():
        table.add_row(label, f"{count:,}")
    for kind, count in report.added_by_type.items():
        table.add_row(f"  artifact: {kind}", f"{count:,}")
    for who, count in report.added_by_annotator.items():
        table.add_row(f"by {who}", f"{count:,}")
    table.add_row("already imported (skipped)", f"{report.skipped_existing:,}")
    if report.duplicates_in_file:
        table.add_row("repeated in the file", f"{report.duplicates_in_file:,}")
    table.add_row("conflicting with earlier labels", f"{report.conflicts:,}")
    console.print(table)
    console.print(f"added {report.added:,} of {report.found:,} labels in the file")
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if training is not None:
        console.print(f"training job {training.id} started ({training.state})", highlight=False)


@labels_app.command("export")
@friendly_errors
def labels_export(
    dataset: Annotated[str, typer.Option(help="Name or id of the dataset.")],
    out: Annotated[Path, typer.Option(help="File to write: .csv, or .json for one JSON document.")],
) -> None:
    """Write every label of a dataset (x,y,z,label,type,annotator,source,created_at,w,h)."""
    from server.datasets.service import get_dataset
    from server.db.base import session_scope
    from server.labels.importer import export_labels_csv, export_labels_json

    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InvalidInput(f"--out {out}: use a .csv or .json file name")
    runtime = _runtime()
    try:
        with session_scope(runtime.sessions) as session:
            target = get_dataset(session, dataset)
            partial = out.with_name(out.name + ".partial")
            writer = export_labels_json if suffix == ".json" else export_labels_csv
            try:
                with partial.open("w", newline="", encoding="utf-8") as handle:
                    count = writer(session, dataset=target, out=handle)
                partial.replace(out)  # a reader never sees half a file
            finally:
                partial.unlink(missing_ok=True)
    finally:
        runtime.close()
    console.print(f"wrote {count:,} labels of {target.name!r} to {out}")
