"""A bounded schemathesis run against the API's own OpenAPI document: no request may get a 5xx,
and every documented answer must match its schema.

The real API app (over HTTP) answers from the embedded ClickHouse, filled through the real
pipeline (ingest -> Kafka -> aggregator) with simulated traffic: persons with traits and plans,
sessions, daily stats, a funnel. Requests carry a valid read key (the admin token for the admin
operations) and the project's id, so they get past authentication into the handlers; person and
funnel ids are the real ones most of the time and generated ones otherwise. Each operation gets
valid (positive) and invalid (negative) inputs, with a fixed seed (`derandomize`), a bounded
number of examples each. The SSE stream (`live`) never ends, so it is left out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance
from schemathesis.core.failures import FailureGroup

from tests.integration.stack import Stack
from werkstroom import funnels
from werkstroom.demo import batches, simulate

pytestmark = [
    pytest.mark.integration,
    # schemathesis's own strategies draw from `random`; not something this test can change
    pytest.mark.filterwarnings(
        "ignore:Do not use the `random` module:hypothesis.errors.HypothesisDeprecationWarning"
    ),
]

EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 12}
SKIP = {("GET", "/api/projects/{project_id}/live")}  # an endless stream
# Known departures from the document, reported to the API's owner; each entry is (method, path,
# status) and goes when the API is fixed. None at present (a bad project name, e.g. with a
# control character, was a string `detail`; it is now the documented list of {loc, msg, type}).
KNOWN: set[tuple[str, str, int]] = set()


@dataclass
class Findings:
    server_errors: list[str] = field(default_factory=list)
    nonconforming: list[str] = field(default_factory=list)
    requests: int = 0
    answered: dict[str, bool] = field(default_factory=dict)  # operation -> got a 2xx


def explore(schema: Any, base_url: str, read_key: str, admin: str, ids: dict[str, list[str]]) -> Findings:
    """Every operation of `schema`, with hypothesis-generated cases; blocking (run in a thread
    while the API serves on the event loop)."""
    findings = Findings()
    session = requests.Session()
    order = {"GET": 0, "POST": 1, "PUT": 2, "PATCH": 3, "DELETE": 4}  # delete the funnel last
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda op: (order.get(op.method.upper(), 5), op.path),
    )
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIP:
            continue
        findings.answered.setdefault(f"{operation.method.upper()} {operation.path}", False)
        names = {p.name for p in operation.path_parameters}
        # the admin's routes take the admin token (a project's change too), the others a read key
        admin_route = operation.path.startswith("/api/projects") and not operation.path.startswith(
            "/api/projects/{project_id}/"
        )
        token = (
            admin
            if admin_route
            else read_key
            if "project_id" in names or operation.path == "/api/me"
            else admin
        )
        fixed = {"project_id": ids["project_id"][0]} if "project_id" in names else {}
        for mode, examples in EXAMPLES.items():
            strategy = operation.as_strategy(
                generation_mode=mode, path_parameters=fixed, headers={"Authorization": f"Bearer {token}"}
            )

            @hypothesis.settings(
                max_examples=examples,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis.given(case=strategy, pick=st.integers(0, 9))
            def run(case: Any, pick: int) -> None:
                params = {p.name for p in case.operation.path_parameters}
                for name in ("person_id", "funnel_id"):
                    if name in params and ids[name] and pick < 7:
                        case.path_parameters[name] = ids[name][pick % len(ids[name])]
                response = case.call(base_url=base_url, session=session, timeout=30)
                findings.requests += 1
                if 200 <= response.status_code < 300:
                    findings.answered[f"{case.method.upper()} {case.operation.path}"] = True
                body = (
                    ""
                    if case.body is None or type(case.body).__name__ == "NotSet"
                    else f" body={case.body!r}"
                )
                where = f"{case.method} {response.request.url}{body}"
                if response.status_code >= 500:
                    findings.server_errors.append(f"{where} -> {response.status_code}: {response.text[:500]}")
                    return
                if (case.method.upper(), case.operation.path, response.status_code) in KNOWN:
                    return
                try:
                    case.validate_response(
                        response,
                        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
                    )
                except FailureGroup as group:
                    for failure in group.exceptions:
                        findings.nonconforming.append(
                            f"{where} -> {response.status_code} {response.text[:300]}: {failure.title}: "
                            f"{failure.message[:600]}"
                        )
                except AssertionError as failure:
                    findings.nonconforming.append(f"{where} -> {response.status_code}: {failure}")

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                # nothing in this operation can be made invalid (no parameters, no body)
    return findings


async def test_generated_requests_get_no_server_error_and_match_the_schema(stack: Stack) -> None:
    project = stack.project
    sim = simulate({project.project_id: project.write_key}, visitors=25, seed=7, days=10)
    calls = sim.calls[project.write_key]
    for chunk in batches(calls, 100):
        response = await stack.post("/v1/batch", {"writeKey": project.write_key, "batch": chunk})
        assert response.status_code == 200, response.text
    await stack.until(
        lambda: (
            stack.scalar(
                "SELECT count() FROM persons FINAL WHERE project_id = {p:String} AND plan != ''",
                p=project.project_id,
            )
            > 0
        ),
        timeout=30,
    )
    funnel = await asyncio.to_thread(
        funnels.create_funnel,
        stack.client,
        project.project_id,
        "Pricing to order",
        [{"event": "$page", "path": "/pricing"}, {"event": "Order Completed"}],
    )
    persons = [
        r[0]
        for r in stack.rows(
            "SELECT person_id FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0 "
            "ORDER BY person_id LIMIT 10",
            p=project.project_id,
        )
    ]
    assert persons

    base_url = await stack.start_api()
    async with httpx.AsyncClient(base_url=base_url) as http:
        document = (await http.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(document)
    ids = {"project_id": [project.project_id], "person_id": persons, "funnel_id": [funnel.funnel_id]}
    findings = await asyncio.to_thread(explore, schema, base_url, project.read_key, "test-admin", ids)

    assert findings.requests > 100
    # Requests reach the handlers: every operation answered at least one of them with success.
    assert all(findings.answered.values()), [op for op, ok in findings.answered.items() if not ok]
    assert not findings.server_errors, "\n".join(findings.server_errors)
    assert not findings.nonconforming, "\n".join(sorted(set(findings.nonconforming)))
