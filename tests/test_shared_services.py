"""Nothing in the suite stops or restarts a server it did not start: PostgreSQL and Redis on
the machine are shared with other test runs and stacks. A test that needs the database down
starts a server of its own (:mod:`tests.postgres_server`) and stops only that."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# ways to stop, restart or reconfigure a server the suite did not start: tools, then Redis
# and SQL commands (upper case, as written in a command string)
SHARED_SERVER_CONTROL = (
    re.compile(
        r"pg_ctlcluster|systemctl|\bservice\s+(postgresql|redis)|redis-cli|pg_reload_conf"
        r"|pg_ctl\s+(stop|restart|kill)|redis\b.*\.(shutdown|config_set)\(",
        re.IGNORECASE,
    ),
    re.compile(r"\b(SHUTDOWN|ALTER SYSTEM|CONFIG SET|DEBUG SLEEP)\b"),
)
# the one module that runs pg_ctl, on the data folder it made itself
OWN_SERVER = TESTS / "postgres_server.py"


def test_no_test_stops_a_server_it_did_not_start() -> None:
    found = [
        f"{path.relative_to(TESTS)}:{n}: {line.strip()}"
        for path in sorted(TESTS.rglob("*.py"))
        if path not in (OWN_SERVER, Path(__file__).resolve())
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if any(pattern.search(line) for pattern in SHARED_SERVER_CONTROL)
    ]
    assert found == [], "\n".join(found)


def test_the_own_server_is_controlled_only_through_its_data_folder() -> None:
    source = OWN_SERVER.read_text()
    assert "pg_ctlcluster" not in source and "systemctl" not in source
    assert '"-D", str(self.data / "pgdata")' in source
