"""What every ``artifact-loop`` sub-command shares: consoles and one-line errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from server.errors import ArtifactLoopError

if TYPE_CHECKING:
    from server.runtime import Runtime

# Service modules are imported inside the commands that use them: the database layer and
# the webknossos library take seconds to load, which `--help` and every other command
# would pay.

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Print user errors on one line and exit non-zero instead of showing a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ArtifactLoopError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None
        except (FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None
        except ValidationError as exc:  # settings from the environment or .env
            problems = "; ".join(
                f"ARTIFACT_LOOP_{str(e['loc'][0]).upper()}: {e['msg'].removeprefix('Value error, ')}"
                if e["loc"]
                else e["msg"]
                for e in exc.errors()
            )
            err_console.print(
                f"[bold red]error:[/] invalid setting {problems}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def runtime() -> Runtime:
    from server.runtime import Runtime

    return Runtime.start()
