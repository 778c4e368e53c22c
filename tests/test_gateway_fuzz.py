"""Acceptance 3: schemathesis fuzzes the gateway's published OpenAPI schema (a bounded number of
examples per operation, as a signed-in team) against a real uvicorn server: no 5xx, and every
response matches the schema (its status code documented, its body valid)."""

from __future__ import annotations

import pytest
import schemathesis
from gateway_server import auth, make_config, make_token, serve_thread
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 12  # per operation (14 operations): about 15 s here


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    cfg = make_config(tmp_path_factory.mktemp("fuzz"), limits={"requests_per_minute": 60000, "burst": 10000})
    token = make_token(cfg, "team-a", "maintainer")
    with serve_thread(cfg) as (url, _):
        yield url, token


def test_no_5xx_and_every_response_matches_the_schema(gateway):
    url, token = gateway
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 13
    calls = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            calls.append(case.call_and_validate(base_url=url, headers=auth(token), timeout=30, checks=checks).status_code)

        fuzz()
    assert len(calls) >= 5 * len(operations) and {200, 404, 422} <= set(calls), sorted(set(calls))
