"""Every example of docs/pricing-models.md runs: each section's catalog is loaded into a fresh
namespace, its SQL runs as mec_admin and its HTTP calls go to the gateway with tokens of that
namespace, and every `-- → …` / `→ …` line is checked. The page is the test's input, so an
example that stops working fails here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "pricing-models.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


@dataclass
class Section:
    title: str
    blocks: list[tuple[str, str]] = field(default_factory=list)


def sections() -> list[Section]:
    out = []
    for chunk in re.split(r"^## ", PAGE.read_text(), flags=re.M)[1:]:
        title, _, body = chunk.partition("\n")
        out.append(Section(title.strip(), [(m.group(1), m.group(2)) for m in FENCE.finditer(body)]))
    return out


def sql_steps(block: str) -> list[tuple[str, str | None]]:
    """[(statement, expectation)]: statements end with `;`, an expectation is the `-- → …` after."""
    steps: list[tuple[str, str | None]] = []
    current: list[str] = []
    for line in block.splitlines():
        s = line.strip()
        if s.startswith("-- →"):
            assert steps and steps[-1][1] is None, f"an expectation without its statement: {s}"
            steps[-1] = (steps[-1][0], s.removeprefix("-- →").strip())
        elif s.startswith("--") or not s:
            continue
        else:
            current.append(line)
            if s.endswith(";"):
                steps.append(("\n".join(current), None))
                current = []
    assert not current, f"a statement without its `;`: {current}"
    return steps


def http_steps(block: str) -> list[dict[str, Any]]:
    steps, req = [], None
    for line in block.splitlines():
        s = line.strip()
        if not s:
            continue
        if req is None:
            method, path = s.split(" ", 1)
            req = {"method": method, "path": path, "headers": {}, "body": None}
        elif s.startswith("→"):
            status, _, expected = s.removeprefix("→").strip().partition(" ")
            req["status"], req["expect"] = int(status), (json.loads(expected) if expected else None)
            steps.append(req)
            req = None
        elif s[0] in "{[":
            req["body"] = s
        else:
            name, _, value = s.partition(":")
            req["headers"][name.strip()] = value.strip()
    assert req is None, f"a request without its `→ status`: {req}"
    return steps


def matches(expected: Any, got: Any) -> bool:
    """`expected` is in `got`: an object's keys shown, among others; anything else equal."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(k in got and matches(v, got[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(matches, expected, got))
    return expected == got


def as_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else str(v)


SECTIONS = sections()


def test_the_page_covers_every_pricing_model():
    titles = {s.title for s in SECTIONS}
    for model in ["Free tier", "Seat-based", "Usage-based with included quantity and overage", "Prepaid credits",
                  "Concurrency-limited", "Rate-limited API tiers", "Feature flags per plan",
                  "Enterprise unlimited", "Overdue handling"]:
        assert model in titles, f"docs/pricing-models.md has no section {model!r}"


@pytest.mark.parametrize("section", SECTIONS, ids=[s.title for s in SECTIONS])
def test_pricing_model(section, new_namespace, connect, make_token, http, gateway_url):
    catalogs = [body for lang, body in section.blocks if lang == "json"]
    assert len(catalogs) == 1, "each model has one catalog"
    ns = new_namespace(catalog=json.loads(catalogs[0]))
    conn = connect(namespace_id=ns, role="mec_admin")
    tokens = {"$SERVICE_TOKEN": make_token(role="mec_service", namespace_id=ns),
              "$ADMIN_TOKEN": make_token(role="mec_admin", namespace_id=ns)}
    checked = 0
    for lang, body in section.blocks:
        if lang == "sql":
            for stmt, expect in sql_steps(body):
                if expect and expect.startswith("ERROR "):
                    with pytest.raises(psycopg.Error) as err:
                        conn.execute(stmt)
                    assert err.value.sqlstate == expect.split()[1], (stmt, str(err.value))
                    checked += 1
                    continue
                row = conn.execute(stmt).fetchone()
                if expect is None:
                    continue
                got = row[0] if row else None
                if expect.startswith("{"):
                    got = json.loads(got) if isinstance(got, str) else got
                    assert matches(json.loads(expect), got), (stmt, got)
                else:
                    assert as_text(got) == expect, (stmt, got)
                checked += 1
        elif lang == "http":
            for req in http_steps(body):
                headers = {k: tokens.get(v.removeprefix("Bearer "), v.removeprefix("Bearer ")) for k, v in req["headers"].items()}
                headers = {k: (f"Bearer {v}" if k == "Authorization" else v) for k, v in headers.items()}
                headers.setdefault("Content-Type", "application/json")
                r = http.request(req["method"], gateway_url + req["path"], data=req["body"], headers=headers, timeout=30)
                assert r.status_code == req["status"], (req["path"], r.status_code, r.text)
                if req["expect"] is not None:
                    assert matches(req["expect"], r.json()), (req["path"], r.text)
                checked += 1
    assert checked >= 3, "each model shows what its calls return"
