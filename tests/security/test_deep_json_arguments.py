"""jsonb arguments nested deeper than pg_mec reads are a caller's mistake: 22023, not XX000.

PostgreSQL accepts jsonb nested thousands of levels deep; serde_json reads 128. pgrx's own jsonb
argument type panicked on such a value before the function ran, so a SQL caller got XX000 (a server
error, HTTP 500 through the gateway). Every jsonb argument of pg_mec now names itself in a 22023."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.sql


def _deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@pytest.mark.parametrize("sql, argument", [
    ("SELECT mec.meter_consumption('deep-meta', %(a)s, 'benchmark_runs', 1, p_metadata => %(j)s::jsonb)",
     "p_metadata"),
    ("SELECT mec.meter_consumption_batch(%(j)s::jsonb)", "p_events"),
    ("SELECT mec.load_catalog(%(j)s::jsonb)", "p_catalog"),
    ("SELECT mec.update_namespace_settings(%(j)s::jsonb)", "p_settings"),
    ("SELECT mec.create_namespace('deep', p_settings => %(j)s::jsonb)", "p_settings"),
])
def test_deeply_nested_jsonb_is_22023(connect, demo_account_id, sql, argument):
    conn = connect(role=None if "create_namespace" in sql else "mec_admin")
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, {"a": demo_account_id, "j": _deep(300)})
    assert e.value.sqlstate == "22023", e.value
    assert argument in str(e.value)
    # Nested within the limit, the same call is judged on its content (no parsing error).
    try:
        conn.execute(sql, {"a": demo_account_id, "j": _deep(20)})
    except psycopg.Error as ok:
        assert "cannot be read" not in str(ok), ok
