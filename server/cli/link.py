"""``artifact-loop dataset link``: link a dataset to its copy on the webKnossos server."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from server.cli.common import console, friendly_errors, runtime

WK_ID = re.compile(r"^[0-9a-f]{24}$")


def register(dataset_app: typer.Typer) -> None:
    """Add ``link`` to the ``dataset`` commands."""

    @dataset_app.command("link")
    @friendly_errors
    def dataset_link(
        dataset: Annotated[str, typer.Argument(help="The dataset here: name or id.")],
        on_server: Annotated[
            str,
            typer.Argument(
                help="Its copy on the webKnossos server (ARTIFACT_LOOP_WK_URL): the id (24 hex "
                "digits, as in /datasets/<name>-<id>/view) or the name there."
            ),
        ],
        push: Annotated[
            bool, typer.Option("--push/--no-push", help="Push proposals as webKnossos tasks.")
        ] = False,
        instances: Annotated[
            int, typer.Option(min=1, max=10, help="Annotators per pushed task.")
        ] = 1,
    ) -> None:
        """Link DATASET to its copy on the webKnossos server, as PUT
        /api/v1/datasets/{id}/webknossos does: the labeling page then offers "Open in
        webKnossos", and `artifact-loop sync` pushes tasks (with --push) and imports
        annotations."""
        from server.datasets.service import get_dataset
        from server.db.base import write_transaction
        from server.webknossos.sync import find_dataset_id

        rt = runtime()
        try:
            wk_id = on_server if WK_ID.match(on_server) else None
            if wk_id is None:
                wk_id = find_dataset_id(rt.settings, name=on_server)
            with write_transaction(rt.sessions) as session:
                found = get_dataset(session, dataset)
                link = {"dataset_id": wk_id, "push": push, "instances": instances}
                found.settings = {**(found.settings or {}), "webknossos": link}
                name = found.name
            where = rt.settings.wk_url or "the server set in ARTIFACT_LOOP_WK_URL"
            console.print(
                f"linked dataset {name!r} to webKnossos dataset {wk_id} on {where}"
                + (
                    f"; proposals are pushed as tasks ({instances} annotator(s) each)"
                    if push
                    else ""
                ),
                highlight=False,
                soft_wrap=True,
            )
        finally:
            rt.close()
