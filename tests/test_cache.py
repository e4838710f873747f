"""The per-backend entitlement cache never answers with a stale entitlement.

meter_consumption and check_entitlement resolve entitlements from a cache in each backend
(pg_mec/src/cache/entitlement.rs, kept fresh by pg_mec/src/pg/invalidation.rs). These tests hold one backend
open, let it cache, change the entitlement from another backend (or in its own transaction), and
check that the next call sees exactly the committed state: a plan change, an override, a rolled
back override, and an account among many that the backend loaded in bulk.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

RESOURCE = "benchmark_runs"  # demo catalog: free 5, starter 100, growth 1000, enterprise unlimited


def allowed(call, conn, account: str) -> Decimal | None:
    got = call("check_entitlement", conn=conn, account_id=account, resource_type=RESOURCE)
    limit = got["quantity_allowed"]
    return None if limit is None else Decimal(str(limit))


def test_plan_change_committed_elsewhere_is_seen_at_once(connect, call, new_account):
    account = new_account("starter")
    reader = connect(role="mec_service")
    assert allowed(call, reader, account) == 100
    assert allowed(call, reader, account) == 100  # now cached in the reader's backend

    call("provision_plan", account_id=account, plan_id="growth")  # another backend commits
    assert allowed(call, reader, account) == 1000
    call("provision_plan", account_id=account, plan_id="enterprise")
    assert allowed(call, reader, account) is None


def test_override_counts_in_its_own_transaction_and_is_gone_after_rollback(connect, call, new_account):
    account = new_account("starter")
    other = connect(role="mec_service")
    tx = connect(role="mec_admin", autocommit=False)
    assert allowed(call, tx, account) == 100
    assert allowed(call, other, account) == 100

    call("set_override", conn=tx, account_id=account, resource_type=RESOURCE, limit=7)
    assert allowed(call, tx, account) == 7  # the writer sees its own change
    assert allowed(call, other, account) == 100  # nobody else does before the commit
    tx.rollback()
    assert allowed(call, tx, account) == 100  # and the writer forgets it on rollback
    assert allowed(call, other, account) == 100


def test_metering_enforces_a_limit_lowered_elsewhere(connect, call, new_account, expect_sqlstate):
    account = new_account("starter")
    meterer = connect(role="mec_service")
    call("meter_consumption", conn=meterer, idempotency_key=f"{account}-1", account_id=account,
         resource_type=RESOURCE, quantity=1)

    call("set_override", account_id=account, resource_type=RESOURCE, limit=2, enforcement="hard")
    call("meter_consumption", conn=meterer, idempotency_key=f"{account}-2", account_id=account,
         resource_type=RESOURCE, quantity=1)
    with expect_sqlstate("ME429"):
        call("meter_consumption", conn=meterer, idempotency_key=f"{account}-3", account_id=account,
             resource_type=RESOURCE, quantity=1)


@pytest.mark.parametrize("accounts", [150])
def test_accounts_loaded_in_bulk_follow_changes(connect, call, new_account, accounts):
    """Past 64 misses a backend loads the namespace's accounts in chunks; those entries must be
    invalidated like the others."""
    ids = [new_account("free") for _ in range(accounts)]
    reader = connect(role="mec_service")
    for account in ids:
        assert allowed(call, reader, account) == 5
    for account in ids:  # second pass: answered from the cache
        assert allowed(call, reader, account) == 5

    changed = ids[len(ids) // 2]
    call("provision_plan", account_id=changed, plan_id="growth")
    assert allowed(call, reader, changed) == 1000
    assert all(allowed(call, reader, a) == 5 for a in ids if a != changed)


def test_resource_type_change_from_load_catalog_is_seen(connect, call, new_namespace, demo_catalog):
    """The cache also holds the resource type (kind, billable statuses): a catalog reload that
    makes 5xx billable must bill the next 5xx event metered by a backend that cached the old one."""
    import copy
    import uuid

    ns = new_namespace()
    admin = connect(namespace_id=ns)
    account = str(uuid.uuid4())
    call("provision_plan", conn=admin, account_id=account, plan_id="starter")
    meterer = connect(namespace_id=ns, role="mec_service")

    def meter_503(key: str) -> bool:
        got = call("meter_consumption", conn=meterer, idempotency_key=key, account_id=account,
                   resource_type=RESOURCE, quantity=1, http_status=503)
        return got["billable"]

    assert meter_503("before") is False  # demo catalog: only 2xx is billable

    catalog = copy.deepcopy(demo_catalog)
    catalog["version"] = "bill-5xx"
    for r in catalog["resources"]:
        if r["resource_type"] == RESOURCE:
            r["billable_statuses"] = ["2xx", "5xx"]
    call("load_catalog", conn=admin, catalog=catalog)
    assert meter_503("after") is True
    meterer = connect(namespace_id=ns, role="mec_service")
    assert meter_503("after, from a new backend") is True


def test_a_resource_type_change_makes_every_shared_entry_stale(connect, call, new_namespace):
    """A resource type is not one account's: changing it must reach every account's shared entry,
    also in a backend that never cached the old one (here no entitlement row changes with it)."""
    import uuid

    ns = new_namespace()
    account = str(uuid.uuid4())
    call("provision_plan", conn=connect(namespace_id=ns), account_id=account, plan_id="starter")

    def billable_503(key: str) -> bool:
        got = call("meter_consumption", conn=connect(namespace_id=ns, role="mec_service"),
                   idempotency_key=key, account_id=account, resource_type=RESOURCE, quantity=1,
                   http_status=503)
        return got["billable"]

    assert billable_503("before") is False  # shared now: only 2xx is billable
    generation = shared_stats(connect)["generation"]
    connect(namespace_id=ns).execute(
        "UPDATE mec_data.resource_types SET billable_statuses = '[\"2xx\", \"5xx\"]'"
        " WHERE namespace_id = %s AND resource_type = %s", (ns, RESOURCE))
    assert shared_stats(connect)["generation"] > generation
    assert billable_503("after") is True


def test_long_read_committed_transaction_sees_a_commit_made_meanwhile(connect, call, new_account):
    """Inside one READ COMMITTED transaction every statement sees what committed before it; the
    cache must not hold on to an entry another backend's commit made stale."""
    account = new_account("starter")
    reader = connect(role="mec_service", autocommit=False)
    assert allowed(call, reader, account) == 100  # cached, the transaction stays open
    # In force since before the reader's transaction began (now() is frozen inside it).
    call("set_override", account_id=account, resource_type=RESOURCE, limit=7, enforcement="hard",
         valid_from="2000-01-01T00:00:00Z")
    assert allowed(call, reader, account) == 7
    reader.rollback()


def test_repeatable_read_neither_uses_nor_fills_the_cache(connect, call, new_account):
    """A REPEATABLE READ transaction answers from its snapshot, and what it read must not be
    left in the cache for later transactions of the same backend."""
    account = new_account("starter")
    reader = connect(role="mec_service", autocommit=False)
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT 1")  # the snapshot is taken here
    # Commits after that snapshot; in force since long before it.
    call("set_override", account_id=account, resource_type=RESOURCE, limit=7, enforcement="hard",
         valid_from="2000-01-01T00:00:00Z")
    # Locking a table not used yet in this transaction takes in the invalidation now, before
    # the lookup: a cache filled from the older snapshot would then look current.
    reader.execute("SELECT count(*) FROM mec.plans")
    assert allowed(call, reader, account) == 100  # the snapshot's answer
    reader.commit()
    assert allowed(call, reader, account) == 7  # a new transaction: the committed override
    reader.commit()


# ---------------------------------------------------------------- the shared cache
# With pg_mec in shared_preload_libraries (scripts/mec up sets it), a lookup one backend made is
# kept in shared memory for every other backend (pg_mec/src/cache/shared.rs).


def shared_stats(connect) -> dict:
    return connect().execute("SELECT mec_data.shared_cache_stats()").fetchone()[0]


def test_a_new_backend_is_answered_from_the_shared_cache(connect, call, new_account):
    account = new_account("starter")
    assert allowed(call, connect(role="mec_service"), account) == 100  # loads and shares it
    before = shared_stats(connect)
    assert before["enabled"] is True
    fresh = connect(role="mec_service")  # a new backend: its own cache is empty
    assert allowed(call, fresh, account) == 100
    after = shared_stats(connect)
    assert after["hits"] >= before["hits"] + 1
    assert after["stores"] == before["stores"]  # nothing was read from the tables


def test_a_committed_change_is_never_answered_from_an_older_shared_entry(connect, call, new_account):
    account = new_account("starter")
    assert allowed(call, connect(role="mec_service"), account) == 100  # shared under this sequence
    sequence = shared_stats(connect)["sequence"]
    call("provision_plan", account_id=account, plan_id="growth")  # another backend commits
    assert shared_stats(connect)["sequence"] > sequence  # the account's mark moved past it
    assert allowed(call, connect(role="mec_service"), account) == 1000  # a new backend
    assert allowed(call, connect(role="mec_service"), account) == 1000  # and one after it


def test_a_change_to_one_account_leaves_the_others_shared(connect, call, new_account):
    """A plan change or a sign-up makes only that account's shared entries stale: a new backend
    still finds every other account in the shared cache instead of reading the tables."""
    kept, changed = new_account("starter"), new_account("starter")
    loader = connect(role="mec_service")
    assert allowed(call, loader, kept) == 100
    assert allowed(call, loader, changed) == 100
    generation = shared_stats(connect)["generation"]
    call("provision_plan", account_id=changed, plan_id="growth")
    new_account("free")  # a sign-up in the same namespace
    before = shared_stats(connect)
    assert before["generation"] == generation

    fresh = connect(role="mec_service")
    assert allowed(call, fresh, kept) == 100
    middle = shared_stats(connect)
    assert middle["hits"] == before["hits"] + 1
    assert middle["stores"] == before["stores"]  # answered from the shared cache
    assert allowed(call, fresh, changed) == 1000
    after = shared_stats(connect)
    assert after["stores"] == middle["stores"] + 1  # read from the tables again, and shared


def test_an_uncommitted_change_never_reaches_the_shared_cache(connect, call, new_account):
    """The writer sees its own override (not the shared entry from before it), and must not
    share what it read, or other backends would use a limit that may never commit."""
    account = new_account("starter")
    assert allowed(call, connect(role="mec_service"), account) == 100  # shared before the change
    tx = connect(role="mec_admin", autocommit=False)
    call("set_override", conn=tx, account_id=account, resource_type=RESOURCE, limit=7)
    assert allowed(call, tx, account) == 7
    assert allowed(call, connect(role="mec_service"), account) == 100
    tx.rollback()
    assert allowed(call, connect(role="mec_service"), account) == 100
