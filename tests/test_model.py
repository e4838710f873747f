"""A model-checked state machine: hypothesis drives meter (now and back-dated), replay, batch,
reserve, commit, cancel, reservation expiry, adjust, grant, override, plan changes and lease
acquire/renew/release/expiry with random quantities, keys and `occurred_at` against the real
cluster, and after every step compares pg_mec's answers and its counters with a small pure-Python
model of one account. `MEC_LONG=1` runs many more examples.

Time is modelled in two eras: the account is provisioned on plan `a` from the start of the period,
every change the machine makes (plan, override, grant) takes effect "now", and a back-dated event
is dated before the machine started, so it is judged by the entitlement in force then (plan `a`
alone) against the period's whole usage, as the contract says back-dated events are. Expiry is
made by moving a hold's or a lease's `expires_at` into the past, as the database owner."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule
from psycopg.types.json import Jsonb

LONG = os.environ.get("MEC_LONG") == "1"
CATALOG = {"resources": [{"resource_type": "m", "kind": "metered"},
                         {"resource_type": "c", "kind": "concurrency"}],
           "plans": [{"plan_id": "a", "default": True,
                      "entitlements": {"m": {"limit": 50, "grace": 0}, "c": {"limit": 3}}},
                     {"plan_id": "b", "entitlements": {"m": {"limit": 80, "grace": 0}, "c": {"limit": 5}}}]}
PLAN_LIMITS = {"a": 50, "b": 80}
PLAN_SLOTS = {"a": 3, "b": 5}
# Back-dated events stay this far inside the period and the namespace's late_event_days (7).
_MARGIN_S = 3600
_LATE_S = 6 * 86400
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
    leases = Bundle("leases")

    def __init__(self):
        super().__init__()
        self.conn = psycopg.connect(os.environ["MEC_DATABASE_URL"], autocommit=True)
        self.ns = namespace(self.conn)
        self.conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (self.ns,))
        self.account = str(uuid.uuid4())
        # On plan `a` from the start of this period, so back-dated events have an entitlement.
        start, now = self.conn.execute(
            "SELECT date_trunc('month', now()), now()").fetchone()
        self.call("provision_plan", p_account_id=self.account, p_plan_id="a", p_effective_at=start)
        # Back-dated events fall in [now - back_room, now - margin): before every change below.
        self.started = now
        self.back_room = min((now - start).total_seconds() - _MARGIN_S, _LATE_S)
        # the model
        self.plan, self.override, self.grants, self.used = "a", None, 0, 0
        self.recorded: dict[str, tuple[int, str]] = {}
        self.held: dict[str, int] = {}
        self.expired_holds: set[str] = set()
        self.leases: set[str] = set()
        self.ended_leases: set[str] = set()

    def teardown(self):
        self.conn.close()

    def limit(self) -> int:
        return (PLAN_LIMITS[self.plan] if self.override is None else self.override) + self.grants

    def limit_at_start(self) -> int:
        return PLAN_LIMITS["a"]

    def occurred_at(self, back: int):
        """`now` for back = 0; otherwise an instant before the machine started (None if the
        period is too young for one)."""
        if back == 0:
            return None
        if self.back_room <= 0:
            return None
        return self.started - timedelta(seconds=_MARGIN_S + back % int(self.back_room))

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

    def fits(self, qty: int, at) -> bool:
        return self.used + qty <= (self.limit() if at is None else self.limit_at_start())

    @rule(target=keys, qty=st.integers(1, 20),
          back=st.one_of(st.just(0), st.integers(1, 10**7)))
    def meter(self, qty, back):
        key = str(uuid.uuid4())
        at = self.occurred_at(back)
        args = dict(p_idempotency_key=key, p_account_id=self.account, p_resource_type="m", p_quantity=qty)
        if at is not None:
            args["p_occurred_at"] = at
        if self.fits(qty, at):
            r = self.call("meter_consumption", **args)
            self.used += qty
            assert r["quantity_used"] == self.used and r["duplicate"] is False, (r, self.used)
            self.recorded[key] = (qty, r["consumption_id"])
        else:
            self.refused("meter_consumption", "ME429", **args)
        return key

    @rule(target=keys, batch=st.lists(
        st.tuples(st.sampled_from(["new", "replay", "bad"]), st.integers(1, 20)), min_size=1, max_size=5))
    def meter_batch(self, batch):
        """Each event of a batch is decided on its own, in order: new events as `meter`, replays of
        keys recorded earlier (in this batch too) as duplicates, a bad quantity rejected with 22023
        and leaving no trace."""
        events, expect = [], []
        known = list(self.recorded)
        for i, (kind, qty) in enumerate(batch):
            if kind == "replay" and known:
                key = known[qty % len(known)]
                q, cid = self.recorded[key]
                events.append({"idempotency_key": key, "account_id": self.account, "resource_type": "m",
                               "quantity": q})
                expect.append(("duplicate", cid))
                continue
            key = str(uuid.uuid4())
            if kind == "bad":
                events.append({"idempotency_key": key, "account_id": self.account, "resource_type": "m",
                               "quantity": -qty})
                expect.append(("rejected", "22023"))
                continue
            events.append({"idempotency_key": key, "account_id": self.account, "resource_type": "m",
                           "quantity": qty})
            if self.used + qty <= self.limit():
                self.used += qty
                expect.append(("accepted", self.used))
                self.recorded[key] = (qty, None)  # its id is learnt from the answer
                known.append(key)
            else:
                expect.append(("rejected", "ME429"))
        r = self.call("meter_consumption_batch", p_events=Jsonb(events))
        assert len(r["results"]) == len(events)
        counts = {"accepted": 0, "duplicates": 0, "rejected": 0}
        for ev, (kind, value), got in zip(events, expect, r["results"]):
            if kind == "rejected":
                counts["rejected"] += 1
                assert got["status"] == "rejected" and got["error"]["code"] == value, (ev, got)
            elif kind == "duplicate":
                counts["duplicates"] += 1
                assert got["duplicate"] is True, (ev, got)
                assert value is None or got["consumption_id"] == value, (ev, got)
            else:
                counts["accepted"] += 1
                assert got["duplicate"] is False and got["quantity_used"] == value, (ev, got, value)
                self.recorded[ev["idempotency_key"]] = (ev["quantity"], got["consumption_id"])
        assert (r["accepted"], r["duplicates"], r["rejected"]) == (
            counts["accepted"], counts["duplicates"], counts["rejected"]), r
        return events[0]["idempotency_key"]

    @rule(key=keys)
    def replay(self, key):
        if key not in self.recorded:
            return
        qty, cid = self.recorded[key]
        r = self.call("meter_consumption", p_idempotency_key=key, p_account_id=self.account,
                      p_resource_type="m", p_quantity=qty)
        assert r["duplicate"] is True and (cid is None or r["consumption_id"] == cid), (r, cid)

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

    @rule(rid=holds)
    def expire_hold(self, rid):
        """Time passes for one hold: it stops counting at once, and the next write on its counter
        gives its quota back."""
        if rid not in self.held:
            return
        self.conn.execute("UPDATE mec_data.reservations SET expires_at = clock_timestamp() - interval '1 second' "
                          "WHERE namespace_id = %s AND reservation_id = %s", (self.ns, rid))
        self.used -= self.held.pop(rid)
        self.expired_holds.add(rid)

    @rule(rid=consumes(holds), extra=st.integers(-20, 10))
    def commit(self, rid, extra):
        if rid in self.expired_holds:
            self.refused("commit_reservation", "ME410", p_reservation_id=rid)
            return
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
            r = self.call("cancel_reservation", p_reservation_id=rid)
            assert r["expired"] is False and r["quantity_released"] == self.held[rid], r
            self.used -= self.held.pop(rid)
        elif rid in self.expired_holds:
            r = self.call("cancel_reservation", p_reservation_id=rid)
            assert r["expired"] is True, r

    # ------------------------------------------------------------------ leases (resource `c`)
    def slots(self) -> int:
        return PLAN_SLOTS[self.plan]

    @rule(target=leases)
    def acquire(self):
        args = dict(p_account_id=self.account, p_resource_type="c", p_ttl_seconds=600)
        if len(self.leases) < self.slots():
            r = self.call("acquire_lease", **args)
            assert r["active_leases"] == len(self.leases) + 1 and r["max_concurrent"] == self.slots(), r
            self.leases.add(r["lease_id"])
            return r["lease_id"]
        self.refused("acquire_lease", "ME429", **args)
        return "none"

    @rule(lid=leases)
    def renew(self, lid):
        if lid in self.leases:
            r = self.call("renew_lease", p_lease_id=lid, p_ttl_seconds=900)
            assert r["renewed"] is True, r
        elif lid in self.ended_leases:
            self.refused("renew_lease", "ME410", p_lease_id=lid, p_ttl_seconds=900)

    @rule(lid=leases)
    def release(self, lid):
        if lid == "none":
            return
        r = self.call("release_lease", p_lease_id=lid)
        if lid in self.leases:
            assert r["already_released"] is False and r["expired"] is False, r
        else:  # released before, or expired: releasing again is not an error and frees nothing
            assert r["already_released"] is True or r["expired"] is True, r
        self.leases.discard(lid)
        self.ended_leases.add(lid)

    @rule(lid=leases)
    def expire_lease(self, lid):
        if lid not in self.leases:
            return
        self.conn.execute("UPDATE mec_data.leases SET expires_at = clock_timestamp() - interval '1 second' "
                          "WHERE namespace_id = %s AND lease_id = %s", (self.ns, lid))
        self.leases.discard(lid)
        self.ended_leases.add(lid)

    @rule(qty=st.integers(-30, -1) | st.integers(1, 30))
    def adjust(self, qty):
        args = dict(p_idempotency_key=str(uuid.uuid4()), p_account_id=self.account, p_resource_type="m",
                    p_quantity=qty, p_reason="model")
        # Recorded usage (without the holds) may not go below zero.
        if self.used - sum(self.held.values()) + qty < 0:
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
        # Holds count in the counter until settled or swept; an expired one not yet swept still
        # sits there (reads leave it out), so the counter is the ledger plus every held row.
        holding = self.conn.execute(
            "SELECT coalesce(sum(quantity), 0) FROM mec_data.reservations WHERE namespace_id = %s "
            "AND account_id = %s AND state = 'held'", (self.ns, self.account)).fetchone()[0]
        assert ledger + sum(self.held.values()) == self.used, (ledger, self.held, self.used)
        assert counters == ledger + holding, (counters, ledger, holding)
        live = self.conn.execute(
            "SELECT count(*) FROM mec_data.reservations WHERE namespace_id = %s AND account_id = %s "
            "AND state = 'held' AND expires_at > clock_timestamp()", (self.ns, self.account)).fetchone()[0]
        assert live == len(self.held)
        c = self.call("check_entitlement", p_account_id=self.account, p_resource_type="c", p_requested_qty=0)
        assert (c["quantity_used"], c["quantity_allowed"]) == (len(self.leases), self.slots()), (
            c, self.leases, self.slots())


Account.TestCase.settings = settings(
    max_examples=200 if LONG else 12, stateful_step_count=60 if LONG else 25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], derandomize=not LONG)
test_account_model = Account.TestCase
