"""A model-checked state machine: hypothesis drives meter, replay, reserve, commit, cancel,
adjust, grant, override and plan changes with random quantities and keys against the real
cluster, and after every step compares pg_mec's answers and its counters with a small pure-Python
model of one account. `MEC_LONG=1` runs many more examples."""

from __future__ import annotations

import os
import uuid

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule
from psycopg.types.json import Jsonb

LONG = os.environ.get("MEC_LONG") == "1"
CATALOG = {"resources": [{"resource_type": "m", "kind": "metered"}],
           "plans": [{"plan_id": "a", "default": True, "entitlements": {"m": {"limit": 50, "grace": 0}}},
                     {"plan_id": "b", "entitlements": {"m": {"limit": 80, "grace": 0}}}]}
PLAN_LIMITS = {"a": 50, "b": 80}
_NS: dict[str, str] = {}


def namespace(conn) -> str:
    if "id" not in _NS:
        ns = str(uuid.uuid4())
        conn.execute("SELECT mec.create_namespace(p_name => 'model', p_namespace_id => %s::uuid)", (ns,))
        conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (ns,))
        conn.execute("SELECT mec.load_catalog(%s)", (Jsonb(CATALOG),))
        _NS["id"] = ns
    return _NS["id"]


class Account(RuleBasedStateMachine):
    keys = Bundle("keys")
    holds = Bundle("holds")

    def __init__(self):
        super().__init__()
        self.conn = psycopg.connect(os.environ["MEC_DATABASE_URL"], autocommit=True)
        self.ns = namespace(self.conn)
        self.conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (self.ns,))
        self.account = str(uuid.uuid4())
        self.call("provision_plan", p_account_id=self.account, p_plan_id="a")
        # the model
        self.plan, self.override, self.grants, self.used = "a", None, 0, 0
        self.recorded: dict[str, tuple[int, str]] = {}
        self.held: dict[str, int] = {}

    def teardown(self):
        self.conn.close()

    def limit(self) -> int:
        return (PLAN_LIMITS[self.plan] if self.override is None else self.override) + self.grants

    def call(self, fn: str, **args):
        names = ", ".join(f"{k} => %({k})s" for k in args)
        cast = {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in args.items()}
        return self.conn.execute(f"SELECT mec.{fn}({names})", cast).fetchone()[0]

    def refused(self, fn: str, code: str, **args) -> None:
        try:
            self.call(fn, **args)
        except psycopg.Error as e:
            assert e.sqlstate == code, (fn, args, e.sqlstate, str(e))
        else:
            raise AssertionError(f"{fn} {args} should have raised {code}")

    @rule(target=keys, qty=st.integers(1, 20))
    def meter(self, qty):
        key = str(uuid.uuid4())
        args = dict(p_idempotency_key=key, p_account_id=self.account, p_resource_type="m", p_quantity=qty)
        if self.used + qty <= self.limit():
            r = self.call("meter_consumption", **args)
            self.used += qty
            assert r["quantity_used"] == self.used and r["duplicate"] is False
            self.recorded[key] = (qty, r["consumption_id"])
        else:
            self.refused("meter_consumption", "ME429", **args)
        return key

    @rule(key=keys)
    def replay(self, key):
        if key not in self.recorded:
            return
        qty, cid = self.recorded[key]
        r = self.call("meter_consumption", p_idempotency_key=key, p_account_id=self.account,
                      p_resource_type="m", p_quantity=qty)
        assert r["duplicate"] is True and r["consumption_id"] == cid

    @rule(key=keys)
    def replay_with_another_quantity(self, key):
        if key in self.recorded:
            self.refused("meter_consumption", "ME409", p_idempotency_key=key, p_account_id=self.account,
                         p_resource_type="m", p_quantity=self.recorded[key][0] + 1)

    @rule(target=holds, qty=st.integers(1, 20))
    def reserve(self, qty):
        key = str(uuid.uuid4())
        args = dict(p_idempotency_key=key, p_account_id=self.account, p_resource_type="m", p_quantity=qty,
                    p_ttl_seconds=3600)
        if self.used + qty <= self.limit():
            r = self.call("reserve_consumption", **args)
            self.used += qty
            self.held[r["reservation_id"]] = qty
            return r["reservation_id"]
        self.refused("reserve_consumption", "ME429", **args)
        return "none"

    @rule(rid=consumes(holds), extra=st.integers(-20, 10))
    def commit(self, rid, extra):
        if rid not in self.held:
            return
        held = self.held[rid]
        actual = max(0, held + extra)
        delta = actual - held
        if delta > 0 and self.used + delta > self.limit():
            self.refused("commit_reservation", "ME429", p_reservation_id=rid, p_actual_quantity=actual)
            self.held.pop(rid)
            self.call("cancel_reservation", p_reservation_id=rid)
            self.used -= held
            return
        r = self.call("commit_reservation", p_reservation_id=rid, p_actual_quantity=actual)
        self.held.pop(rid)
        self.used += delta
        assert r["quantity_used"] == self.used

    @rule(rid=consumes(holds))
    def cancel(self, rid):
        if rid in self.held:
            self.call("cancel_reservation", p_reservation_id=rid)
            self.used -= self.held.pop(rid)

    @rule(qty=st.integers(-30, 30).filter(lambda q: q != 0))
    def adjust(self, qty):
        args = dict(p_idempotency_key=str(uuid.uuid4()), p_account_id=self.account, p_resource_type="m",
                    p_quantity=qty, p_reason="model")
        if self.used + qty < 0:
            self.refused("adjust_consumption", "22023", **args)
        else:
            self.call("adjust_consumption", **args)
            self.used += qty

    @rule(qty=st.integers(1, 30))
    def grant(self, qty):
        self.call("grant_credits", p_account_id=self.account, p_resource_type="m", p_quantity=qty)
        self.grants += qty

    @rule(limit=st.integers(0, 100))
    def override(self, limit):
        self.call("set_override", p_account_id=self.account, p_resource_type="m", p_limit=limit)
        self.override = limit

    @precondition(lambda self: True)
    @rule(plan=st.sampled_from(["a", "b"]))
    def change_plan(self, plan):
        self.call("provision_plan", p_account_id=self.account, p_plan_id=plan)
        self.plan = plan

    @invariant()
    def answers_and_counters_agree_with_the_model(self):
        c = self.call("check_entitlement", p_account_id=self.account, p_resource_type="m", p_requested_qty=0)
        assert (c["quantity_used"], c["quantity_allowed"]) == (self.used, self.limit()), (c, self.used, self.limit())
        counters = self.conn.execute(
            "SELECT coalesce(sum(used), 0) FROM mec_data.usage_counters WHERE namespace_id = %s AND account_id = %s",
            (self.ns, self.account)).fetchone()[0]
        ledger = self.conn.execute(
            "SELECT coalesce(sum(quantity), 0) FROM mec_data.consumption WHERE namespace_id = %s AND account_id = %s "
            "AND billable", (self.ns, self.account)).fetchone()[0]
        assert counters == ledger + sum(self.held.values()) == self.used


Account.TestCase.settings = settings(
    max_examples=200 if LONG else 12, stateful_step_count=60 if LONG else 25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], derandomize=not LONG)
test_account_model = Account.TestCase
