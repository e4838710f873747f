"""check_policy: a plan's access policy applied to one request before the work — the task's model class
(default, kept, fallback downgrade or deny), per-request caps (plan-wide, and per task in place of them), the
remaining quota shaping `max_output_tokens` or denying, every deny reason listed, plans without a policy,
malformed requests, roles, and catalogs whose policy is invalid (ME422 with each problem's JSON path).
Written from docs/CONTRACT.md ("Access policy", issue 14) and §5 (the catalog)."""

from __future__ import annotations

import copy
import json
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.sql

ORDER = ["ADVANCED", "PRO_L", "PRO_M", "BASE_S"]
QUOTA = {"input_tokens": "input_tokens", "output_tokens": "output_tokens", "requests": "llm_requests"}
CATALOG_VERSION = "2026-05"


def limits(input_tokens, output_tokens, requests):
    return {"input_tokens": {"limit": input_tokens, "grace": 0},
            "output_tokens": {"limit": output_tokens, "grace": 0},
            "llm_requests": {"limit": requests, "grace": 0}}


def mc(allowed, default):
    return {"model_class": {"allowed": allowed, "default": default}}


CATALOG = {
    "version": CATALOG_VERSION,
    "resources": [
        {"resource_type": "input_tokens", "kind": "metered", "unit": "token"},
        {"resource_type": "output_tokens", "kind": "metered", "unit": "token"},
        {"resource_type": "llm_requests", "kind": "metered", "unit": "request"},
    ],
    "plans": [
        # plans[0]: BASE_S only for prior art, a small draft, no diagrams
        {"plan_id": "free", "name": "Free", "default": True,
         "entitlements": limits(20000, 5000, 3),
         "policy": {
             "dimensions": {"model_class": ORDER},
             "tasks": {
                 "LLM1_PRIOR_ART": mc(["BASE_S"], "BASE_S"),
                 "LLM2_DRAFT": {**mc(["BASE_S", "PRO_M"], "BASE_S"), "max_input_tokens": 2000},
             },
             "max_input_tokens": 8000,
             "max_output_tokens": 1000,
             "quota": QUOTA,
         }},
        # plans[1]: PRO_M / PRO_L with per-task caps (smaller and larger than the plan-wide ones)
        {"plan_id": "pro", "name": "Pro", "version": "3",
         "entitlements": limits(500000, 100000, 1000),
         "policy": {
             "dimensions": {"model_class": ORDER},
             "tasks": {
                 "LLM1_PRIOR_ART": mc(["PRO_L", "PRO_M", "BASE_S"], "PRO_M"),
                 "LLM2_DRAFT": {**mc(["PRO_M", "BASE_S"], "PRO_M"), "max_input_tokens": 5000},
                 "LLM3_DIAGRAM": {**mc(["PRO_L"], "PRO_L"), "max_input_tokens": 200000,
                                  "max_output_tokens": 2000},
             },
             "max_input_tokens": 100000,
             "max_output_tokens": 8000,
             "quota": QUOTA,
         }},
        # plans[2]: ADVANCED, unlimited quota, no input cap
        {"plan_id": "enterprise", "name": "Enterprise",
         "entitlements": limits(None, None, None),
         "policy": {
             "dimensions": {"model_class": ORDER},
             "tasks": {
                 "LLM1_PRIOR_ART": mc(["ADVANCED", "PRO_L"], "PRO_L"),
                 "LLM2_DRAFT": mc(ORDER, "ADVANCED"),
                 "LLM3_DIAGRAM": {**mc(["ADVANCED", "PRO_L"], "ADVANCED"), "max_output_tokens": 64000},
             },
             "max_output_tokens": 32000,
             "quota": QUOTA,
         }},
        # plans[3]: no policy at all
        {"plan_id": "basic", "name": "Basic", "entitlements": limits(1000, 1000, 2)},
        # plans[4]: a policy without tasks (so the request needs no task)
        {"plan_id": "lite", "name": "Lite", "entitlements": limits(100000, 100000, 100),
         "policy": {"max_input_tokens": 1000, "max_output_tokens": 500, "quota": QUOTA}},
    ],
}

RESULT_KEYS = {"decision", "account_id", "plan_id", "plan_version", "task", "reasons", "shaped"}
SHAPED_KEYS = {"model_class", "input_tokens", "max_output_tokens"}


@pytest.fixture(scope="module")
def policy_ns(database_url):
    """One namespace for the module with CATALOG loaded; every test provisions its own accounts."""
    ns = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT mec.create_namespace(p_name => %s, p_namespace_id => %s::uuid)",
                     (f"check-policy-{ns[:8]}", ns))
        conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (ns,))
        conn.execute("SELECT mec.load_catalog(p_catalog => %s)", (Jsonb(CATALOG),))
    return ns


class Llm:
    def __init__(self, ns, conn):
        self.ns = ns
        self.conn = conn

    def account(self, plan_id: str) -> str:
        a = str(uuid.uuid4())
        self.conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => %s)", (a, plan_id))
        return a

    def meter(self, account: str, resource: str, qty: int) -> None:
        self.conn.execute(
            "SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
            "p_resource_type => %s, p_quantity => %s)", (str(uuid.uuid4()), account, resource, qty))

    def check(self, account: str, request, conn=None):
        return (conn or self.conn).execute(
            "SELECT mec.check_policy(p_account_id => %s::uuid, p_request => %s)",
            (account, Jsonb(request))).fetchone()[0]

    def used(self, account: str, resource: str):
        return self.conn.execute(
            "SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => %s)",
            (account, resource)).fetchone()[0]["quantity_used"]


@pytest.fixture
def llm(policy_ns, connect):
    return Llm(policy_ns, connect(namespace_id=policy_ns))


def codes(result) -> list[str]:
    return [r["code"] for r in result["reasons"]]


def req(task=None, model_class=None, input_tokens=None, max_output_tokens=None, **extra):
    r = {}
    if task is not None:
        r["task"] = task
    if model_class is not None:
        r["dimensions"] = {"model_class": model_class}
    if input_tokens is not None:
        r["input_tokens"] = input_tokens
    if max_output_tokens is not None:
        r["max_output_tokens"] = max_output_tokens
    r.update(extra)
    return r


P1, P2, P3 = "LLM1_PRIOR_ART", "LLM2_DRAFT", "LLM3_DIAGRAM"
ALLOW, DENY = "allow", "deny"

# (plan, usage metered first, request, decision, reason codes, shaped values expected)
# For "allow" the codes are the exact reasons (None: not asserted); for "deny" each one must be listed.
CASES = [
    # ---- the task's default model class; shaped echoes what was asked
    pytest.param("pro", {}, req(P1, input_tokens=1200, max_output_tokens=700), ALLOW, [],
                 {"model_class": "PRO_M", "input_tokens": 1200, "max_output_tokens": 700}, id="default-class"),
    pytest.param("pro", {}, req(P1, input_tokens=10, max_output_tokens=10, dimensions={}), ALLOW, [],
                 {"model_class": "PRO_M"}, id="default-class-empty-dimensions"),
    pytest.param("pro", {}, req(P3, input_tokens=10, max_output_tokens=10), ALLOW, [],
                 {"model_class": "PRO_L"}, id="default-class-llm3"),
    pytest.param("free", {}, req(P1, input_tokens=100, max_output_tokens=100), ALLOW, [],
                 {"model_class": "BASE_S", "input_tokens": 100, "max_output_tokens": 100}, id="default-class-free"),
    pytest.param("enterprise", {}, req(P2, input_tokens=1, max_output_tokens=1), ALLOW, [],
                 {"model_class": "ADVANCED"}, id="default-class-enterprise"),
    # ---- a requested class the task allows is kept
    pytest.param("pro", {}, req(P1, "PRO_L", 500, 500), ALLOW, [],
                 {"model_class": "PRO_L", "input_tokens": 500, "max_output_tokens": 500}, id="kept-pro_l"),
    pytest.param("pro", {}, req(P1, "BASE_S", 500, 500), ALLOW, [], {"model_class": "BASE_S"}, id="kept-base_s"),
    pytest.param("enterprise", {}, req(P1, "ADVANCED", 500, 500), ALLOW, [], {"model_class": "ADVANCED"},
                 id="kept-advanced"),
    # ---- better than allowed: downgraded to the next allowed class after it in the order
    pytest.param("pro", {}, req(P1, "ADVANCED", 500, 500), ALLOW, ["fallback"],
                 {"model_class": "PRO_L", "input_tokens": 500, "max_output_tokens": 500}, id="fallback-advanced-to-pro_l"),
    pytest.param("pro", {}, req(P2, "ADVANCED", 500, 500), ALLOW, ["fallback"], {"model_class": "PRO_M"},
                 id="fallback-skips-a-class-not-allowed"),
    pytest.param("pro", {}, req(P2, "PRO_L", 500, 500), ALLOW, ["fallback"], {"model_class": "PRO_M"},
                 id="fallback-pro_l-to-pro_m"),
    pytest.param("pro", {}, req(P3, "ADVANCED", 500, 500), ALLOW, ["fallback"], {"model_class": "PRO_L"},
                 id="fallback-llm3"),
    pytest.param("free", {}, req(P1, "ADVANCED", 100, 100), ALLOW, ["fallback"], {"model_class": "BASE_S"},
                 id="fallback-free-all-the-way-down"),
    pytest.param("free", {}, req(P2, "PRO_L", 100, 100), ALLOW, ["fallback"], {"model_class": "PRO_M"},
                 id="fallback-free-llm2"),
    pytest.param("enterprise", {}, req(P1, "PRO_M", 100, 100), DENY, ["dimension_value_not_allowed"], {},
                 id="worse-than-allowed-enterprise"),
    # ---- no allowed class after the requested one
    pytest.param("pro", {}, req(P3, "BASE_S", 500, 500), DENY, ["dimension_value_not_allowed"], {},
                 id="no-fallback-base_s"),
    pytest.param("pro", {}, req(P3, "PRO_M", 500, 500), DENY, ["dimension_value_not_allowed"], {},
                 id="no-fallback-pro_m"),
    # ---- unknown task, dimension, value: reasons to deny, not errors
    pytest.param("free", {}, req(P3, input_tokens=100, max_output_tokens=100), DENY, ["task_not_allowed"], {},
                 id="task-not-on-plan"),
    pytest.param("pro", {}, req("LLM9_POEM", input_tokens=100, max_output_tokens=100), DENY, ["task_not_allowed"],
                 {}, id="unknown-task"),
    pytest.param("pro", {}, req(P1, input_tokens=100, max_output_tokens=100, dimensions={"region": "eu"}), DENY,
                 ["unknown_dimension"], {}, id="unknown-dimension"),
    pytest.param("pro", {}, req(P1, "ULTRA", 100, 100), DENY, ["dimension_value_not_allowed"], {},
                 id="unknown-value"),
    # ---- input_tokens against the cap: plan-wide, and a task's cap in its place (smaller or larger)
    pytest.param("free", {}, req(P1, input_tokens=8000, max_output_tokens=100), ALLOW, [], {"input_tokens": 8000},
                 id="input-at-plan-cap"),
    pytest.param("free", {}, req(P1, input_tokens=8001, max_output_tokens=100), DENY, ["input_tokens_over_cap"], {},
                 id="input-over-plan-cap"),
    pytest.param("pro", {}, req(P1, input_tokens=100001, max_output_tokens=100), DENY, ["input_tokens_over_cap"], {},
                 id="input-over-plan-cap-pro"),
    pytest.param("free", {}, req(P2, input_tokens=2000, max_output_tokens=100), ALLOW, [], {"input_tokens": 2000},
                 id="input-at-task-cap"),
    pytest.param("free", {}, req(P2, input_tokens=2001, max_output_tokens=100), DENY, ["input_tokens_over_cap"], {},
                 id="input-over-smaller-task-cap"),
    pytest.param("pro", {}, req(P2, input_tokens=5001, max_output_tokens=100), DENY, ["input_tokens_over_cap"], {},
                 id="input-over-smaller-task-cap-pro"),
    pytest.param("pro", {}, req(P3, input_tokens=150000, max_output_tokens=100), ALLOW, [],
                 {"input_tokens": 150000}, id="larger-task-cap-replaces-plan-cap"),
    pytest.param("pro", {}, req(P3, input_tokens=200001, max_output_tokens=100), DENY, ["input_tokens_over_cap"],
                 {}, id="input-over-larger-task-cap"),
    pytest.param("enterprise", {}, req(P1, input_tokens=5000000, max_output_tokens=100), ALLOW, [],
                 {"input_tokens": 5000000}, id="no-input-cap"),
    # ---- max_output_tokens above the cap: allowed, shaped to the cap
    pytest.param("pro", {}, req(P1, input_tokens=100, max_output_tokens=10000), ALLOW, ["max_output_tokens_reduced"],
                 {"max_output_tokens": 8000, "input_tokens": 100}, id="output-reduced-to-plan-cap"),
    pytest.param("pro", {}, req(P1, input_tokens=100, max_output_tokens=8000), ALLOW, [],
                 {"max_output_tokens": 8000}, id="output-at-plan-cap"),
    pytest.param("pro", {}, req(P3, input_tokens=100, max_output_tokens=5000), ALLOW, ["max_output_tokens_reduced"],
                 {"max_output_tokens": 2000}, id="output-reduced-to-task-cap"),
    pytest.param("pro", {}, req(P3, input_tokens=100, max_output_tokens=1500), ALLOW, [],
                 {"max_output_tokens": 1500}, id="output-under-task-cap"),
    pytest.param("enterprise", {}, req(P3, input_tokens=100, max_output_tokens=50000), ALLOW, [],
                 {"max_output_tokens": 50000}, id="larger-task-output-cap-replaces-plan-cap"),
    pytest.param("enterprise", {}, req(P1, input_tokens=100, max_output_tokens=50000), ALLOW,
                 ["max_output_tokens_reduced"], {"max_output_tokens": 32000}, id="output-reduced-enterprise"),
    pytest.param("pro", {}, req(P1, input_tokens=100), ALLOW, None, {"max_output_tokens": 8000},
                 id="output-not-asked-gets-the-cap"),
    pytest.param("pro", {}, req(P3, input_tokens=100), ALLOW, None, {"max_output_tokens": 2000},
                 id="output-not-asked-gets-the-task-cap"),
    # ---- near the end of the quota
    pytest.param("pro", {"output_tokens": 99700}, req(P1, input_tokens=100, max_output_tokens=2000), ALLOW,
                 ["max_output_tokens_reduced"], {"max_output_tokens": 300, "input_tokens": 100},
                 id="output-quota-300-left"),
    pytest.param("pro", {"output_tokens": 99700}, req(P1, input_tokens=100, max_output_tokens=300), ALLOW, [],
                 {"max_output_tokens": 300}, id="output-quota-exactly-enough"),
    pytest.param("pro", {"output_tokens": 99700}, req(P1, input_tokens=100), ALLOW, None,
                 {"max_output_tokens": 300}, id="output-quota-300-left-not-asked"),
    pytest.param("free", {"output_tokens": 4200}, req(P1, input_tokens=100, max_output_tokens=1000), ALLOW,
                 ["max_output_tokens_reduced"], {"max_output_tokens": 800}, id="output-quota-below-cap-free"),
    pytest.param("pro", {"output_tokens": 100000}, req(P1, input_tokens=100, max_output_tokens=2000), DENY,
                 ["output_quota_exhausted"], {}, id="output-quota-exhausted"),
    pytest.param("pro", {"output_tokens": 100000}, req(P1, input_tokens=100), DENY, ["output_quota_exhausted"], {},
                 id="output-quota-exhausted-not-asked"),
    pytest.param("pro", {"input_tokens": 495000}, req(P1, input_tokens=5000, max_output_tokens=100), ALLOW, [],
                 {"input_tokens": 5000}, id="input-quota-exactly-enough"),
    pytest.param("pro", {"input_tokens": 495000}, req(P1, input_tokens=5001, max_output_tokens=100), DENY,
                 ["input_quota_exhausted"], {}, id="input-quota-exhausted"),
    pytest.param("free", {"input_tokens": 15000}, req(P1, input_tokens=6000, max_output_tokens=100), DENY,
                 ["input_quota_exhausted"], {}, id="input-under-cap-over-quota"),
    pytest.param("free", {"llm_requests": 2}, req(P1, input_tokens=100, max_output_tokens=100), ALLOW, [], {},
                 id="last-request-left"),
    pytest.param("free", {"llm_requests": 3}, req(P1, input_tokens=100, max_output_tokens=100), DENY,
                 ["request_quota_exhausted"], {}, id="request-quota-exhausted"),
    pytest.param("enterprise", {"input_tokens": 10**9, "output_tokens": 10**9, "llm_requests": 10**6},
                 req(P2, input_tokens=100000, max_output_tokens=20000), ALLOW, [],
                 {"input_tokens": 100000, "max_output_tokens": 20000}, id="unlimited-quota"),
    # ---- a deny lists every reason
    pytest.param("free", {}, req(P3, input_tokens=9000, max_output_tokens=100), DENY,
                 ["task_not_allowed", "input_tokens_over_cap"], {}, id="two-reasons-task-and-cap"),
    pytest.param("pro", {"llm_requests": 1000}, req(P3, "BASE_S", 250000, 100), DENY,
                 ["dimension_value_not_allowed", "input_tokens_over_cap", "request_quota_exhausted"], {},
                 id="three-reasons"),
    pytest.param("pro", {"input_tokens": 499000, "output_tokens": 100000},
                 req(P1, input_tokens=2000, max_output_tokens=100, dimensions={"region": "eu"}), DENY,
                 ["unknown_dimension", "input_quota_exhausted", "output_quota_exhausted"], {},
                 id="three-reasons-dimension-and-quotas"),
    # ---- a plan without policy allows every request as asked
    pytest.param("basic", {}, req(P1, "ADVANCED", 123, 4567), ALLOW, [],
                 {"model_class": "ADVANCED", "input_tokens": 123, "max_output_tokens": 4567}, id="no-policy"),
    pytest.param("basic", {}, req("ANY_TASK", input_tokens=10**7, max_output_tokens=10**7,
                                  dimensions={"region": "eu"}), ALLOW, [],
                 {"input_tokens": 10**7, "max_output_tokens": 10**7}, id="no-policy-anything-goes"),
    pytest.param("basic", {"output_tokens": 1000, "llm_requests": 2, "input_tokens": 1000},
                 req(P1, input_tokens=5000, max_output_tokens=5000), ALLOW, [],
                 {"input_tokens": 5000, "max_output_tokens": 5000}, id="no-policy-ignores-quota"),
    # ---- a policy without tasks: the request needs no task
    pytest.param("lite", {}, req(input_tokens=1000, max_output_tokens=500), ALLOW, [],
                 {"input_tokens": 1000, "max_output_tokens": 500}, id="no-tasks-within-caps"),
    pytest.param("lite", {}, req(input_tokens=1001, max_output_tokens=100), DENY, ["input_tokens_over_cap"], {},
                 id="no-tasks-input-over-cap"),
    pytest.param("lite", {}, req(input_tokens=10, max_output_tokens=900), ALLOW, ["max_output_tokens_reduced"],
                 {"max_output_tokens": 500}, id="no-tasks-output-reduced"),
]


@pytest.mark.parametrize("plan,used,ask,decision,expected_codes,shaped", CASES)
def test_check_policy_decides(llm, plan, used, ask, decision, expected_codes, shaped):
    a = llm.account(plan)
    for resource, qty in used.items():
        llm.meter(a, resource, qty)
    r = llm.check(a, ask)
    got = codes(r)
    assert r["decision"] == decision, r
    assert RESULT_KEYS <= set(r), r
    # shaped has one key per dimension (none for a policy without dimensions), and the token counts asked
    assert {k for k in ("input_tokens", "max_output_tokens") if k in ask} <= set(r["shaped"]), r
    assert r["account_id"] == a and r["plan_id"] == plan, r
    assert r["task"] == ask.get("task"), r
    if decision == ALLOW:
        if expected_codes is not None:
            assert sorted(got) == sorted(expected_codes), r
    else:
        assert got, r
        missing = [c for c in expected_codes if c not in got]
        assert not missing, (missing, r)
    for key, value in shaped.items():
        assert r["shaped"][key] == value, (key, r)
    for reason in r["reasons"]:
        assert isinstance(reason["code"], str) and isinstance(reason["message"], str) and reason["message"], r


def test_result_has_every_key(llm):
    a = llm.account("pro")
    r = llm.check(a, req(P1, "ADVANCED", 1200, 10000))
    assert RESULT_KEYS <= set(r), r
    assert SHAPED_KEYS <= set(r["shaped"]), r
    assert r["decision"] == "allow" and r["account_id"] == a and r["plan_id"] == "pro"
    assert r["plan_version"] == "3" and r["task"] == P1
    assert sorted(codes(r)) == ["fallback", "max_output_tokens_reduced"]
    assert r["shaped"] == {**r["shaped"], "model_class": "PRO_L", "input_tokens": 1200, "max_output_tokens": 8000}
    for reason in r["reasons"]:
        assert {"code", "message"} <= set(reason) and reason["message"], reason
    # a plan without its own version takes the catalog's
    f = llm.check(llm.account("free"), req(P1, input_tokens=1, max_output_tokens=1))
    assert f["plan_id"] == "free" and f["plan_version"] == CATALOG_VERSION, f
    # a deny has the same shape
    d = llm.check(a, req("LLM9_POEM", input_tokens=1))
    assert RESULT_KEYS <= set(d) and d["decision"] == "deny" and d["task"] == "LLM9_POEM", d
    assert all({"code", "message"} <= set(x) for x in d["reasons"]), d
    # no policy: allowed, no reasons
    b = llm.check(llm.account("basic"), req(P2, input_tokens=1, max_output_tokens=2))
    assert RESULT_KEYS <= set(b) and b["decision"] == "allow" and b["reasons"] == [], b
    assert b["plan_id"] == "basic" and b["plan_version"] == CATALOG_VERSION, b


MALFORMED = [
    pytest.param([1, 2], id="array"),
    pytest.param("LLM1_PRIOR_ART", id="string"),
    pytest.param(5, id="number"),
    pytest.param(True, id="boolean"),
    pytest.param(req(P1, input_tokens=-1), id="negative-input"),
    pytest.param(req(P1, input_tokens=1.5), id="fractional-input"),
    pytest.param(req(P1, input_tokens=10, max_output_tokens=-1), id="negative-output"),
    pytest.param(req(P1, input_tokens=10, max_output_tokens=2.5), id="fractional-output"),
]


@pytest.mark.parametrize("plan", ["pro", "basic"])
@pytest.mark.parametrize("ask", MALFORMED)
def test_malformed_request_is_22023(llm, expect_sqlstate, plan, ask):
    a = llm.account(plan)
    with expect_sqlstate("22023"):
        llm.check(a, ask)


def test_unknown_account_is_me404(llm, connect, expect_sqlstate):
    with expect_sqlstate("ME404"):
        llm.check(str(uuid.uuid4()), req(P1, input_tokens=1))
    service = connect(namespace_id=llm.ns, role="mec_service")
    with expect_sqlstate("ME404"):
        llm.check(str(uuid.uuid4()), req(P1, input_tokens=1), conn=service)


def test_check_policy_is_read_only(llm, connect):
    a = llm.account("pro")
    llm.meter(a, "input_tokens", 1000)
    llm.meter(a, "output_tokens", 99700)
    llm.meter(a, "llm_requests", 1)
    resources = ("input_tokens", "output_tokens", "llm_requests")

    def snapshot():
        rows = llm.conn.execute("SELECT count(*), coalesce(sum(quantity), 0) FROM mec.consumption "
                                "WHERE account_id = %s::uuid", (a,)).fetchone()
        return [llm.used(a, r) for r in resources], tuple(rows)

    before = snapshot()
    assert before[0] == [1000, 99700, 1]
    asks = [req(P1, input_tokens=100, max_output_tokens=100), req(P1, "ADVANCED", 100, 5000),
                req(P1, input_tokens=600000), req("LLM9_POEM"), req(P3, "BASE_S", 10, 10)]
    for _ in range(3):
        for ask in asks:
            llm.check(a, ask)
    assert snapshot() == before
    # and it runs in a read-only transaction
    ro = connect(namespace_id=llm.ns, autocommit=False)
    ro.execute("SET TRANSACTION READ ONLY")
    for ask in asks:
        llm.check(a, ask, conn=ro)
    ro.rollback()
    user = connect(namespace_id=llm.ns, role="mec_user", claims={"account_id": a}, autocommit=False)
    user.execute("SET TRANSACTION READ ONLY")
    assert llm.check(a, asks[1], conn=user)["shaped"]["max_output_tokens"] == 300
    user.rollback()
    assert snapshot() == before


def test_mec_user_for_its_own_account_only(llm, connect, expect_sqlstate):
    mine, other = llm.account("pro"), llm.account("free")
    user = connect(namespace_id=llm.ns, role="mec_user", claims={"account_id": mine})
    r = llm.check(mine, req(P1, input_tokens=10, max_output_tokens=10), conn=user)
    assert r["decision"] == "allow" and r["account_id"] == mine and r["shaped"]["model_class"] == "PRO_M", r
    with expect_sqlstate("42501"):
        llm.check(other, req(P1, input_tokens=10, max_output_tokens=10), conn=user)
    # no account claim: not its own account either
    nobody = connect(namespace_id=llm.ns, role="mec_user", claims={})
    with expect_sqlstate("42501"):
        llm.check(mine, req(P1, input_tokens=10), conn=nobody)
    # the service and the admin may ask for any account of the namespace
    for role in ("mec_service", "mec_admin"):
        c = connect(namespace_id=llm.ns, role=role)
        assert llm.check(other, req(P1, input_tokens=10, max_output_tokens=10), conn=c)["plan_id"] == "free"
        assert llm.check(mine, req(P3, input_tokens=10, max_output_tokens=10), conn=c)["decision"] == "allow"


def test_other_namespace_cannot_see_the_account(llm, new_namespace, connect, expect_sqlstate):
    a = llm.account("pro")
    other_ns = new_namespace(catalog=CATALOG)
    service = connect(namespace_id=other_ns, role="mec_service")
    with expect_sqlstate("ME404"):
        llm.check(a, req(P1, input_tokens=10), conn=service)


# ------------------------------------------------------------ catalogs whose policy is invalid
def with_policy(mutate):
    cat = copy.deepcopy(CATALOG)
    mutate(cat["plans"])
    return cat


PRO = "$.plans[1].policy"
BAD_POLICIES = [
    pytest.param(lambda p: p[1]["policy"]["tasks"][P1]["model_class"].update(allowed=["PRO_M", "ULTRA"]),
                 [f"{PRO}.tasks.{P1}"], id="allowed-value-not-in-dimensions"),
    pytest.param(lambda p: p[1]["policy"]["tasks"][P1]["model_class"].update(default="ADVANCED"),
                 [f"{PRO}.tasks.{P1}"], id="default-not-allowed"),
    pytest.param(lambda p: p[1]["policy"]["tasks"][P1]["model_class"].update(default="ULTRA"),
                 [f"{PRO}.tasks.{P1}"], id="default-not-in-dimensions"),
    pytest.param(lambda p: p[1]["policy"].update(colour="blue"), [PRO], id="unknown-policy-key"),
    pytest.param(lambda p: p[1]["policy"]["tasks"][P2].update(temperature=1), [f"{PRO}.tasks.{P2}"],
                 id="unknown-task-key"),
    pytest.param(lambda p: p[1]["policy"]["tasks"][P1].update(region={"allowed": ["eu"], "default": "eu"}),
                 [f"{PRO}.tasks.{P1}"], id="task-dimension-not-declared"),
    pytest.param(lambda p: p[1]["policy"].update(max_input_tokens=-1), [f"{PRO}.max_input_tokens"],
                 id="negative-plan-cap"),
    pytest.param(lambda p: p[1]["policy"].update(max_output_tokens=-8000), [f"{PRO}.max_output_tokens"],
                 id="negative-plan-output-cap"),
    pytest.param(lambda p: p[1]["policy"]["tasks"][P3].update(max_output_tokens=-5), [f"{PRO}.tasks.{P3}"],
                 id="negative-task-cap"),
    pytest.param(lambda p: p[1]["policy"]["quota"].update(output_tokens="completion_tokens"), [f"{PRO}.quota"],
                 id="quota-undeclared-resource"),
    pytest.param(lambda p: p[1]["policy"]["quota"].update(images="llm_requests"), [f"{PRO}.quota"],
                 id="quota-unknown-key"),
    pytest.param(lambda p: p[1]["policy"].update(dimensions={"model_class": "PRO_M"}), [PRO],
                 id="dimension-not-an-array"),
    pytest.param(lambda p: p[1].update(policy="strict"), [PRO], id="policy-not-an-object"),
    # every problem is listed, each at its own plan
    pytest.param(lambda p: (p[0]["policy"]["tasks"][P1]["model_class"].update(default="PRO_M"),
                            p[1]["policy"].update(max_input_tokens=-1),
                            p[2]["policy"]["quota"].update(requests="gpu_minutes")),
                 [f"$.plans[0].policy.tasks.{P1}", f"{PRO}.max_input_tokens", "$.plans[2].policy.quota"],
                 id="three-problems-in-three-plans"),
]


@pytest.mark.parametrize("mutate,prefixes", BAD_POLICIES)
def test_invalid_policy_is_me422_with_paths(new_namespace, expect_sqlstate, mutate, prefixes):
    with expect_sqlstate("ME422") as err:
        new_namespace(catalog=with_policy(mutate))
    detail = json.loads(err.value.diag.message_detail)
    paths = [p["path"] for p in detail["problems"]]
    assert len(paths) >= len(prefixes), detail
    for prefix in prefixes:
        assert any(path.startswith(prefix) for path in paths), (prefix, detail)
    # nothing but the policy is at fault
    assert all(".policy" in path for path in paths), detail
    assert all(p["message"] for p in detail["problems"]), detail


def test_a_valid_policy_loads_and_loading_it_again_changes_nothing(new_namespace, connect):
    ns = new_namespace(catalog=CATALOG)
    conn = connect(namespace_id=ns)
    again = conn.execute("SELECT mec.load_catalog(p_catalog => %s)", (Jsonb(CATALOG),)).fetchone()[0]
    assert again.get("plans_created", 0) == 0, again
    a = str(uuid.uuid4())
    conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'pro')", (a,))
    r = conn.execute("SELECT mec.check_policy(p_account_id => %s::uuid, p_request => %s)",
                     (a, Jsonb(req(P3, "ADVANCED", 10, 10)))).fetchone()[0]
    assert r["decision"] == "allow" and r["shaped"]["model_class"] == "PRO_L" and codes(r) == ["fallback"], r
