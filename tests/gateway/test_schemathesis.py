"""schemathesis against the gateway's own OpenAPI document (`GET /api/`), as a service and as an
admin of a namespace of the test's own: generated requests for every route the role may reach
(the gateway's own routes outside `/api` included: webhooks, admin endpoints, probes),
stateful sequences included. No answer may be a 5xx, and every answer must match the document —
its status code, content type and schema. Bounded here; `MEC_LONG=1` generates more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gateway]

EXAMPLES = "200" if os.environ.get("MEC_LONG") == "1" else "15"


@pytest.mark.parametrize("role", ["mec_service", "mec_admin"])
def test_every_route_answers_as_documented(role, new_namespace, make_token, api_url, tmp_path):
    ns = new_namespace()
    token = make_token(role=role, namespace_id=ns, ttl=1800)
    binary = Path(sys.executable).parent / "schemathesis"
    r = subprocess.run(
        # No --url: the document's own servers place each route (`/api` for PostgREST's paths,
        # `/` for the webhooks, admin endpoints and probes), so every route is reached where it is.
        [str(binary), "run", f"{api_url}/", "-H", f"Authorization: Bearer {token}",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,"
                     "content_type_conformance",
         "--phases", "fuzzing,stateful", "--max-examples", EXAMPLES, "--workers", "2", "--seed", "1",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout
