"""Upgrades never lose data, and an upgraded database is the same as a fresh install.

Creates pg_mec 0.1.0 (the release before the security issue, as pg_mec/sql/pg_mec--0.1.0.sql shipped)
in a scratch database, fills it with the rows a running 0.1.0 holds, runs ALTER EXTENSION pg_mec
UPDATE, and checks that every row is still there and used as before (a replay is a duplicate, usage
goes on from where it was). Then compares the upgraded schema with a fresh CREATE EXTENSION of the
current version object by object (tables, columns, constraints, indexes, policies, triggers,
functions, grants, comments): an upgrade script that forgot something fails here."""

from __future__ import annotations

import contextlib
import json
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest

pytestmark = pytest.mark.sql

OLD, FRESH = "mec_upgrade_from_0_1_0", "mec_upgrade_fresh"
NS = "0a0a0a0a-0000-4000-8000-00000000a001"
ACCOUNT = "0a0a0a0a-0000-4000-8000-0000000ac001"

# What a 0.1.0 installation holds after a catalog load, a provisioning and three events
# (written as 0.1.0's functions wrote them).
FILL_0_1_0 = f"""
INSERT INTO mec_data.namespaces (namespace_id, name, settings) VALUES ('{NS}', 'before-upgrade', '{{"late_event_days": 3}}');
INSERT INTO mec_data.catalogs (namespace_id, version, document, digest) VALUES ('{NS}', 'v1', '{{"resources": []}}', 'd1');
INSERT INTO mec_data.resource_types (namespace_id, resource_type, kind) VALUES ('{NS}', 'runs', 'metered');
INSERT INTO mec_data.plans (namespace_id, plan_id, name, is_default) VALUES ('{NS}', 'basic', 'Basic', true);
INSERT INTO mec_data.plan_entitlements (namespace_id, plan_id, resource_type, quantity_limit, period)
     VALUES ('{NS}', 'basic', 'runs', 100, 'month');
INSERT INTO mec_data.accounts (namespace_id, account_id, plan_id, plan_effective_at)
     VALUES ('{NS}', '{ACCOUNT}', 'basic', date_trunc('month', now()) - interval '1 day');
INSERT INTO mec_data.entitlements (namespace_id, account_id, resource_type, source, plan_id, quantity_limit,
                                   period, valid_from)
     VALUES ('{NS}', '{ACCOUNT}', 'runs', 'plan', 'basic', 100, 'month', date_trunc('month', now()) - interval '1 day');
INSERT INTO mec_data.usage_counters (namespace_id, account_id, resource_type, period_start, period_end, used)
     VALUES ('{NS}', '{ACCOUNT}', 'runs', date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
             (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC', 3);
INSERT INTO mec_data.consumption (namespace_id, idempotency_key, consumption_id, account_id, resource_type,
                                  quantity, occurred_at, period_start, period_end, billable, quantity_used,
                                  quantity_allowed)
     SELECT '{NS}', 'old-' || g, gen_random_uuid(), '{ACCOUNT}', 'runs', 1, now(),
            date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
            (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC', true, g, 100
     FROM generate_series(1, 3) g;
INSERT INTO mec_data.audit_log (namespace_id, action, subject) VALUES ('{NS}', 'provision_plan', '{ACCOUNT}');
"""

TABLES = ["namespaces", "catalogs", "resource_types", "plans", "plan_entitlements", "accounts",
          "entitlements", "usage_counters", "consumption", "audit_log"]

# One line per object of schemas mec and mec_data, as PostgreSQL describes it.
DESCRIBE = r"""
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname IN ('mec', 'mec_data'))
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' rls=' || c.relrowsecurity || ' force=' || c.relforcerowsecurity
       || ' opts=' || coalesce(array_to_string(c.reloptions, ','), '')
       || ' acl=' || coalesce(array_to_string(ARRAY(SELECT x::text FROM unnest(c.relacl) x ORDER BY 1), ' '), '')
       || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '')
  FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM ns) AND c.relkind <> 'i'
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' notnull=' || a.attnotnull || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
       || ' identity=' || a.attidentity::text
       || ' acl=' || coalesce(array_to_string(ARRAY(SELECT x::text FROM unnest(a.attacl) x ORDER BY 1), ' '), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace IN (SELECT oid FROM ns) AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind <> 'i'
UNION ALL
SELECT 'constraint ' || c.relname || '.' || k.conname || ' ' || pg_get_constraintdef(k.oid)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid WHERE c.relnamespace IN (SELECT oid FROM ns)
UNION ALL
SELECT 'domain ' || t.typname || ' ' || format_type(t.typbasetype, t.typtypmod) || ' '
       || coalesce((SELECT string_agg(pg_get_constraintdef(k.oid), ' ' ORDER BY k.conname)
                    FROM pg_constraint k WHERE k.contypid = t.oid), '')
  FROM pg_type t WHERE t.typnamespace IN (SELECT oid FROM ns) AND t.typtype = 'd'
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace IN (SELECT oid FROM ns)
UNION ALL
SELECT 'policy ' || c.relname || '.' || p.polname || ' cmd=' || p.polcmd::text || ' permissive=' || p.polpermissive
       || ' roles=' || array_to_string(ARRAY(SELECT coalesce(r.rolname, 'public') FROM unnest(p.polroles) x
                                            LEFT JOIN pg_roles r ON r.oid = x ORDER BY 1), ',')
       || ' using=' || coalesce(pg_get_expr(p.polqual, p.polrelid), '')
       || ' check=' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relnamespace IN (SELECT oid FROM ns)
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace IN (SELECT oid FROM ns) AND NOT t.tgisinternal
UNION ALL
SELECT 'function ' || n.nspname || '.' || p.proname || '(' || pg_get_function_arguments(p.oid) || ') '
       || pg_get_function_result(p.oid) || ' ' || p.provolatile::text || p.proisstrict::text || p.proparallel::text
       || ' ' || p.prosrc || ' ' || coalesce(p.probin, '')
       || ' acl=' || coalesce(array_to_string(ARRAY(SELECT x::text FROM unnest(p.proacl) x ORDER BY 1), ' '), '')
       || ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '')
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.pronamespace IN (SELECT oid FROM ns)
UNION ALL
SELECT 'schema ' || n.nspname || ' acl=' || coalesce(array_to_string(ARRAY(SELECT x::text FROM unnest(n.nspacl) x ORDER BY 1), ' '), '')
  FROM pg_namespace n WHERE n.oid IN (SELECT oid FROM ns)
UNION ALL
SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
 WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'pg_mec' AND d.deptype = 'e'
ORDER BY 1
"""


def _url(base: str, dbname: str) -> str:
    return urlunparse(urlparse(base)._replace(path="/" + dbname))


@pytest.fixture
def scratch(database_url):
    admin = psycopg.connect(_url(database_url, "postgres"), autocommit=True)
    for name in (OLD, FRESH):
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    conns = {name: psycopg.connect(_url(database_url, name), autocommit=True) for name in (OLD, FRESH)}
    yield conns
    for c in conns.values():
        with contextlib.suppress(Exception):
            c.close()
    for name in (OLD, FRESH):
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def _counts(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM mec_data.{t}").fetchone()[0] for t in TABLES}


def test_update_from_0_1_0_keeps_every_row_and_matches_a_fresh_install(scratch):
    old, fresh = scratch[OLD], scratch[FRESH]
    old.execute("CREATE EXTENSION pg_mec VERSION '0.1.0'")
    old.execute(FILL_0_1_0)
    before = _counts(old)
    default = old.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_mec'").fetchone()[0]
    assert default != "0.1.0"

    old.execute("ALTER EXTENSION pg_mec UPDATE")
    assert old.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_mec'").fetchone()[0] == default
    assert _counts(old) == before

    # The rows are used as before: the counter goes on, an old key is a duplicate.
    old.execute("SELECT set_config('mec.namespace_id', %s, false)", (NS,))
    old.execute("SET ROLE mec_service")
    check = old.execute("SELECT mec.check_entitlement(%s, 'runs')", (ACCOUNT,)).fetchone()[0]
    assert (check["quantity_used"], check["quantity_allowed"]) == (3, 100), check
    again = old.execute("SELECT mec.meter_consumption('old-1', %s, 'runs', 1)", (ACCOUNT,)).fetchone()[0]
    assert again["duplicate"] is True
    new = old.execute("SELECT mec.meter_consumption('new-1', %s, 'runs', 1)", (ACCOUNT,)).fetchone()[0]
    assert (new["duplicate"], new["quantity_used"]) == (False, 4), new
    # And the security release's rules hold in the upgraded database.
    with pytest.raises(psycopg.Error) as e:
        old.execute("UPDATE mec_data.usage_counters SET used = 0")
    assert e.value.sqlstate == "42501"
    old.execute("RESET ROLE")

    fresh.execute("CREATE EXTENSION pg_mec")
    upgraded = [r[0] for r in old.execute(DESCRIBE)]
    created = [r[0] for r in fresh.execute(DESCRIBE)]
    only_upgraded = sorted(set(upgraded) - set(created))
    only_fresh = sorted(set(created) - set(upgraded))
    assert not only_upgraded and not only_fresh, json.dumps(
        {"only after the upgrade": only_upgraded, "only in a fresh install": only_fresh}, indent=1)
    assert len(created) > 200
