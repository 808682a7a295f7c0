"""A throw-away PostgreSQL server of a test's own (``initdb`` and ``pg_ctl`` on a free port in
a temporary folder), for tests that stop the database: they stop this one, never the server
other tests and stacks on the machine share."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import free_port


def postgres_bin() -> Path | None:
    """The newest installed ``initdb``/``pg_ctl`` folder (Debian keeps them off the PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    """One server: ``url`` is its admin URL (user ``postgres``, trust, 127.0.0.1 only)."""

    bin: Path
    data: Path
    port: int
    run_as: str | None  # PostgreSQL refuses to run as root: then as this user

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._pg_ctl("start", "-w", "-t", "60", "-o", options, "-l", str(self.data / "log"))

    def stop(self) -> None:
        self._pg_ctl("stop", "-w", "-t", "60", "-m", "fast")

    def running(self) -> bool:
        return (self.data / "pgdata" / "postmaster.pid").exists()

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data / "pgdata"), *args)

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        subprocess.run(
            [*prefix, *command], check=True, timeout=120, stdout=subprocess.DEVNULL, cwd=self.data
        )


@contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    """Start a server of its own; stop it and delete its files afterwards, whatever happened."""
    found = postgres_bin()
    if found is None or not (found / "initdb").is_file():
        pytest.skip("needs PostgreSQL's initdb and pg_ctl (apt-get install postgresql)")
    run_as = None
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("PostgreSQL refuses to run as root, and runuser is missing")
        run_as = "postgres"
    # not under pytest's tmp_path: that folder is private to the user running the tests
    data = Path(tempfile.mkdtemp(prefix="artifact-loop-pg-"))
    server = PostgresServer(bin=found, data=data, port=free_port(), run_as=run_as)
    try:
        if run_as:
            shutil.chown(data, user=run_as)
        server._run(
            str(found / "initdb"),
            "-D",
            str(data / "pgdata"),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        server.start()
        yield server
    finally:
        if server.running():
            server.stop()
        shutil.rmtree(data, ignore_errors=True)
