"""Property-based fuzzing of the OpenAPI document with schemathesis: no input may cause a 5xx.

Every operation of ``/openapi.json`` gets generated requests, valid and invalid
(positive and negative modes), sent straight to the WSGI app.  Bounded: at most
``FUZZ_EXAMPLES`` examples per operation and mode, and ``FUZZ_SECONDS`` in all
(environment variables, defaults 30 and 60; the pass with API keys on gets a third of the
examples and half the time).  Each response must be a non-5xx whose body matches
the schema the document gives for its status (the response models forbid
unknown fields), with our JSON error shape when it is an error.
"""
from __future__ import annotations

import io
import os
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "40"))
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))


def fuzz_operation(op: Any, mode: GenerationMode, *, examples: int, until: float, headers: dict[str, str],
                   stats: dict[str, int], failures: list[str]) -> None:
    """Send up to ``examples`` generated requests for one operation, stopping at ``until``."""

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        if time.monotonic() > until:
            return
        response = case.call(headers=headers)
        stats["requests"] += 1
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except Exception as exc:  # collect them all, report at the end
            failures.append(f"{op.label} [{mode.value}]: {str(exc)[:800]}")
            return
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body

    try:
        run()
    except Exception as exc:  # a schema this generator cannot satisfy is not a server failure
        if "Unsatisfiable" not in type(exc).__name__ and "Unsatisfiable" not in str(exc):
            raise


@pytest.mark.parametrize("keys", [False, True], ids=["open", "api-keys"])
def test_openapi_fuzz_finds_no_server_error(make_app, obama_jpg, keys):
    app = make_app(api_keys=keys)
    headers = {}
    if keys:  # a key scoped to one gallery: the fuzzer's other names meet 403s
        key, _ = app.extensions["facerec"].keys.create(["default"])
        headers = {"X-API-Key": key}
    client = app.test_client()
    # something to find: a person with a face, so GETs on real names and ids are exercised too
    client.post("/api/v1/galleries/default/people/obama/faces", headers=headers,
                data={"file": [(io.BytesIO(obama_jpg), "o.jpg")]}, content_type="multipart/form-data")
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) >= 20
    budget = FUZZ_SECONDS if not keys else FUZZ_SECONDS / 2
    examples = FUZZ_EXAMPLES if not keys else max(5, FUZZ_EXAMPLES // 3)
    deadline = time.monotonic() + budget
    per_op = budget / (2 * len(ops))
    stats = {"requests": 0}
    failures: list[str] = []
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                break
            until = min(deadline, time.monotonic() + per_op * 1.5)
            fuzz_operation(op, mode, examples=examples, until=until, headers=headers, stats=stats, failures=failures)
    assert not failures, "\n\n".join(failures[:5])
    assert stats["requests"] >= 100, stats
