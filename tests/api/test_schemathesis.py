"""Property-based run over the OpenAPI schema against the real server: no 5xx, ever, and
every answer (status code, content type, body) is one the schema declares."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from server.auth import create_token
from server.datasets.service import register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from tests.conftest import write_test_dataset
from tests.processes import api_server, service_env


@dataclass
class Live:
    base: str
    headers: dict[str, str]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("schemathesis")
    url = f"sqlite:///{root / 'db.sqlite'}"
    migrate.upgrade(url)
    write_test_dataset(root / "ds", shape=(420, 420, 2))
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, secret = create_token(session, name="fuzzer", role="admin")
        register_dataset(session, name="fuzz", path=str(root / "ds"))
    engine.dispose()
    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=url,
        ARTIFACT_LOOP_DATA_DIR=str(root / "data"),
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
        ARTIFACT_LOOP_MAX_UPLOAD_BYTES="100000",
    )
    with api_server(env, log=root / "api.log") as base:
        yield Live(base=base, headers={"Authorization": f"Bearer {secret}"})


@pytest.fixture(scope="module")
def api_schema(live: Live) -> schemathesis.BaseSchema:
    return schemathesis.from_uri(f"{live.base}/api/v1/openapi.json", base_url=live.base)


# FastAPI writes OpenAPI 3.1
schemathesis.experimental.OPEN_API_3_1.enable()
schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: schemathesis.Case, live: Live) -> None:
    response = case.call(headers=live.headers, timeout=60)
    case.validate_response(
        response,
        checks=(
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ),
    )
    assert "Traceback" not in response.text
