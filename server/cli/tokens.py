"""``artifact-loop token ...``: API tokens for annotators and admins."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from server.cli.common import console, friendly_errors, runtime

# Service modules are imported inside the commands that use them: the database layer and
# the webknossos library take seconds to load, which `--help` and every other command
# would pay.

token_app = typer.Typer(help="API tokens for annotators and admins.", no_args_is_help=True)


@token_app.command("create")
@friendly_errors
def token_create(
    name: Annotated[str, typer.Argument(help="Annotator name, recorded with every label.")],
    role: Annotated[str, typer.Option(help="annotator or admin.")] = "annotator",
) -> None:
    """Make a token and print it once (it is stored only as a hash)."""
    from server.auth import create_token
    from server.db.base import session_scope

    rt = runtime()
    try:
        with session_scope(rt.sessions) as session:
            token, secret = create_token(session, name=name, role=role)
            prefix = token.prefix
    finally:
        rt.close()
    console.print(f"token for {name} ({role}), shown only now:", highlight=False)
    print(secret)
    console.print(f"revoke it with `artifact-loop token revoke {prefix}`", highlight=False)


@token_app.command("list")
@friendly_errors
def token_list() -> None:
    """Show tokens (prefix, owner, role, last use); never the secrets."""
    from server.auth import list_tokens
    from server.db.base import session_scope

    rt = runtime()
    try:
        with session_scope(rt.sessions) as session:
            table = Table("prefix", "annotator", "role", "created", "last used", "revoked")
            for t in list_tokens(session):
                table.add_row(
                    t.prefix,
                    t.annotator.name,
                    t.annotator.role,
                    f"{t.created_at:%Y-%m-%d %H:%M}",
                    f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "-",
                    f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "",
                )
            console.print(table)
    finally:
        rt.close()


@token_app.command("revoke")
@friendly_errors
def token_revoke(
    prefix: Annotated[str, typer.Argument(help="The token's prefix as shown by `token list`.")],
) -> None:
    """Revoke a token at once."""
    from server.auth import revoke_token
    from server.db.base import session_scope

    rt = runtime()
    try:
        with session_scope(rt.sessions) as session:
            token = revoke_token(session, prefix=prefix)
            owner = token.annotator.name
    finally:
        rt.close()
    console.print(f"revoked token {prefix} of {owner}")
