"""schemathesis against the running service's OpenAPI document: whatever the schema allows (and, in
negative mode, much it does not), the service answers without a server error, its answers match the
schema, and every error answer is a JSON body."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from service_support import Server

EXAMPLES = 30  # per operation and mode


@pytest.fixture(scope="module")
def admin(shared_server: Server) -> tuple[str, str, schemathesis.BaseSchema]:
    """The server (SQLite and PostgreSQL), an admin token (every operation is reachable), and its schema."""
    return shared_server.url, shared_server.token("admin"), schemathesis.openapi.from_url(f"{shared_server.url}/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_gets_a_server_error(admin: tuple[str, str, schemathesis.BaseSchema], mode: GenerationMode) -> None:
    url, token, schema = admin
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
            if response.status_code >= 400 and response.status_code != 405:
                assert "error" in response.json(), f"{case.method} {case.path}: {response.text[:200]}"

        try:
            check()
        except Unsatisfiable:  # nothing about the operation can be made invalid (e.g. GET /healthz)
            assert mode is GenerationMode.NEGATIVE
