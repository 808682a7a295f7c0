"""Shared fixtures: real PostgreSQL (127.0.0.1:5432, user postgres) and SQLite databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("WEBKNOSSOS_SKIP_VERSION_CHECK", "True")

PG_ADMIN_URL = os.environ.get(
    "ARTIFACT_LOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def pytest_configure(config: pytest.Config) -> None:
    """Nothing a test run writes lands in the user's data dir or in another run's: a run gets
    its own default data dir (tests that start services give each their own below it)."""
    import tempfile

    os.environ.setdefault(
        "ARTIFACT_LOOP_DATA_DIR", tempfile.mkdtemp(prefix=f"artifact-loop-tests-{os.getpid()}-")
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``-m "not slow"`` leaves out every test that starts a real process (uvicorn, a Celery
    worker, a browser): those whose module uses the process helpers or that use the served
    site are marked here, so a new one cannot forget (the few that run a console command in
    a subprocess carry the mark themselves)."""
    for item in items:
        module = getattr(item, "module", None)
        helpers = module is not None and any(
            hasattr(module, name) for name in ("api_server", "celery_worker")
        )
        browser = {"site", "playwright_browser"} & set(getattr(item, "fixturenames", ()))
        if helpers or browser:
            item.add_marker(pytest.mark.slow)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _missing_service(what: str) -> None:
    """Skip with one line; ``ARTIFACT_LOOP_TEST_REQUIRE_SERVICES=1`` (CI) makes it an error."""
    if os.environ.get("ARTIFACT_LOOP_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(what, pytrace=False)
    pytest.skip(what)


def _pg_admin_connect() -> object:
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)


_PG_PROBLEM: list[str] = []  # the first failure, so later tests skip without a 5 s wait


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Admin URL of the PostgreSQL server; a one-line skip (or error) when it is not running."""
    if not _PG_PROBLEM:
        try:
            conn = _pg_admin_connect()
            conn.close()  # type: ignore[attr-defined]
        except Exception as exc:
            _PG_PROBLEM.append(
                f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({_one_line(exc)}); start it or "
                "set ARTIFACT_LOOP_TEST_PG"
            )
        else:
            _PG_PROBLEM.append("")
    if _PG_PROBLEM[0]:
        _missing_service(_PG_PROBLEM[0])
    yield PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"al_test_{uuid.uuid4().hex[:12]}"
    conn = _pg_admin_connect()
    conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    base = pg_server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        conn.execute(  # type: ignore[attr-defined]
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')  # type: ignore[attr-defined]
        conn.close()  # type: ignore[attr-defined]


REDIS_URL = os.environ.get("ARTIFACT_LOOP_TEST_REDIS", "redis://127.0.0.1:6379")
_REDIS_LOCK = "artifact-loop-tests:lock"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """An empty Redis database of its own for one test: claimed with a lock key, so test runs
    started side by side on one machine never share a broker."""
    import redis

    try:
        redis.Redis.from_url(f"{REDIS_URL}/0", socket_connect_timeout=3).ping()
    except Exception as exc:
        _missing_service(
            f"Redis is not reachable at {REDIS_URL} ({_one_line(exc)}); start it or set "
            "ARTIFACT_LOOP_TEST_REDIS"
        )
    owner = f"{os.getpid()}-{uuid.uuid4().hex}"
    for db in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
        # a lock left by a crashed run expires after an hour
        if client.set(_REDIS_LOCK, owner, nx=True, ex=3600):
            break
    else:  # pragma: no cover - sixteen runs at once
        pytest.fail("no free Redis database (1-15) for this test")
    for key in client.scan_iter():
        if key != _REDIS_LOCK.encode():
            client.delete(key)
    try:
        yield f"{REDIS_URL}/{db}"
    finally:
        client.flushdb()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.sqlite'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on the embedded SQLite database and on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite'}"
    return request.getfixturevalue("pg_url")


def write_test_dataset(
    path: Path,
    *,
    shape: tuple[int, int, int] = (600, 500, 6),
    data_format: str = "zarr3",
    seed: int = 0,
    offset: tuple[int, int, int] = (0, 0, 0),
    mags: tuple[int, ...] = (1,),
) -> np.ndarray:
    """A small random uint8 dataset (layer ``color``); returns the mag-1 array (x, y, z)."""
    from server.wklib import wk

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=shape, dtype=np.uint8)
    ds = wk.Dataset(path, voxel_size=(32, 32, 35))
    layer = ds.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", data_format=data_format)
    kwargs = {"chunk_shape": (32, 32, 32)}
    if data_format == "zarr3":
        kwargs["shard_shape"] = (256, 256, 32)
    else:
        kwargs["shard_shape"] = (256, 256, 256)
    mag1 = layer.add_mag(1, **kwargs)
    mag1.write(data, absolute_offset=offset, allow_resize=True)
    for m in mags[1:]:
        mv = layer.add_mag(f"{m}-{m}-1", **kwargs)
        down = data[::m, ::m, :]
        mv.write(down, absolute_offset=offset, allow_resize=True)
    return data
