"""Shared pytest fixtures for pg_mec's end-to-end tests.

Everything comes from `.mec/env`, written by `scripts/mec up` (and exported by
`scripts/mec test`): the cluster, the gateway, the JWT secret and the demo
namespace/account. Run the tests with `scripts/mec test`, or after
`scripts/mec up` with `.mec/venv/bin/pytest -q tests/`.

Fixtures (see each docstring):
  mec_env, repo_root, database_url, authenticator_url, gateway_url, api_url,
  jwt_secret, demo_namespace_id, demo_account_id, demo_catalog,
  db, connect, call, expect_sqlstate, make_token, http, api,
  postgrest_client, new_namespace, new_account
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sql_helpers import adapt as _adapt

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = REPO_ROOT / ".mec" / "env"
DEMO_CATALOG = REPO_ROOT / "sql" / "demo" / "catalog.json"


# ---------------------------------------------------------------- settings
def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        parts = shlex.split(raw) if raw else [""]
        values[key.strip()] = parts[0] if parts else ""
    return values


def _load_mec_env() -> dict[str, str]:
    env = _read_env_file(ENV_FILE)
    # Variables exported by the caller win (scripts/mec test exports .mec/env).
    for key, value in os.environ.items():
        if key.startswith(("MEC_", "PG")):
            env[key] = value
    return env


def pytest_report_header(config: pytest.Config) -> list[str]:
    env = _load_mec_env()
    if not env.get("MEC_DATABASE_URL"):
        return ["pg_mec: no .mec/env - run scripts/mec up first"]
    return [
        f"pg_mec: postgres 127.0.0.1:{env.get('PGPORT')} db {env.get('PGDATABASE', 'mec')}, "
        f"gateway {env.get('MEC_GATEWAY_URL')}, demo namespace {env.get('MEC_DEMO_NAMESPACE_ID')}"
    ]


def pytest_configure(config: pytest.Config) -> None:
    for marker in (
        "slow: takes more than a few seconds",
        "concurrency: opens many parallel connections",
        "gateway: talks HTTP to the running gateway",
        "sql: talks to PostgreSQL directly",
    ):
        config.addinivalue_line("markers", marker)


@pytest.fixture(scope="session")
def mec_env() -> dict[str, str]:
    """All variables of .mec/env (overridden by MEC_*/PG* from the environment)."""
    env = _load_mec_env()
    if not env.get("MEC_DATABASE_URL"):
        pytest.fail(f"{ENV_FILE} not found or incomplete: run `scripts/mec up` first", pytrace=False)
    return env


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def database_url(mec_env) -> str:
    """Superuser URL of database mec (platform operator: may name any namespace)."""
    return mec_env["MEC_DATABASE_URL"]


@pytest.fixture(scope="session")
def authenticator_url(mec_env) -> str:
    """URL of the gateway's login role mec_authenticator (NOINHERIT)."""
    return mec_env["MEC_AUTHENTICATOR_URL"]


@pytest.fixture(scope="session")
def gateway_url(mec_env) -> str:
    """Base URL of the running gateway, e.g. http://127.0.0.1:8000 (no trailing slash)."""
    return mec_env["MEC_GATEWAY_URL"].rstrip("/")


@pytest.fixture(scope="session")
def api_url(gateway_url) -> str:
    """The PostgREST-compatible root: <gateway>/api."""
    return gateway_url + "/api"


@pytest.fixture(scope="session")
def jwt_secret(mec_env) -> str:
    return mec_env["MEC_JWT_SECRET"]


@pytest.fixture(scope="session")
def demo_namespace_id(mec_env) -> str:
    return mec_env["MEC_DEMO_NAMESPACE_ID"]


@pytest.fixture(scope="session")
def demo_account_id(mec_env) -> str:
    """The demo account (external_id 'demo-user', plan 'starter'). Shared: prefer new_account."""
    return mec_env["MEC_DEMO_ACCOUNT_ID"]


@pytest.fixture(scope="session")
def demo_catalog() -> dict[str, Any]:
    """sql/demo/catalog.json, parsed."""
    if not DEMO_CATALOG.exists():
        pytest.fail(f"{DEMO_CATALOG} not found", pytrace=False)
    return json.loads(DEMO_CATALOG.read_text())


# ---------------------------------------------------------------- SQL


@pytest.fixture
def connect(database_url, demo_namespace_id) -> Iterator[Callable[..., Any]]:
    """Factory for extra connections, closed after the test.

    connect(namespace_id=<demo>, role=None, claims=None, autocommit=True, url=None)
      namespace_id: sets the GUC mec.namespace_id (None = demo; "" = leave unset)
      role:         SET ROLE to mec_user / mec_service / mec_admin (as the gateway does)
      claims:       dict stored in request.jwt.claims for the session
      url:          another connection URL (default: the superuser URL)
    """
    import psycopg
    from psycopg import sql

    opened: list[psycopg.Connection] = []

    def _connect(namespace_id: str | None = None, role: str | None = None,
                 claims: dict[str, Any] | None = None, autocommit: bool = True,
                 url: str | None = None) -> psycopg.Connection:
        conn = psycopg.connect(url or database_url, autocommit=autocommit)
        opened.append(conn)
        ns = demo_namespace_id if namespace_id is None else namespace_id
        if ns:
            conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (ns,))
        if claims is not None:
            conn.execute("SELECT set_config('request.jwt.claims', %s, false)", (json.dumps(claims),))
        if role:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        if not autocommit:
            conn.commit()
        return conn

    yield _connect
    for conn in opened:
        with contextlib.suppress(Exception):
            conn.close()


@pytest.fixture
def db(connect):
    """Autocommit superuser connection to database mec with mec.namespace_id = demo namespace."""
    return connect()


@pytest.fixture
def call(db) -> Callable[..., Any]:
    """call("check_entitlement", account_id=..., resource_type="x", conn=None) -> the jsonb as a dict.

    Keyword names may omit the p_ prefix; dicts/lists are sent as jsonb.
    Pass conn=<connection> to call on another connection (e.g. one from `connect`).
    """
    from psycopg import sql

    def _call(function: str, conn: Any = None, **kwargs: Any) -> Any:
        args = []
        params = {}
        for i, (name, value) in enumerate(kwargs.items()):
            arg = name if name.startswith("p_") else f"p_{name}"
            args.append(sql.SQL("{} => {}").format(
                sql.Identifier(arg), sql.Placeholder(f"a{i}")))
            params[f"a{i}"] = _adapt(value)
        query = sql.SQL("SELECT mec.{}({})").format(
            sql.Identifier(function), sql.SQL(", ").join(args))
        row = (conn or db).execute(query, params).fetchone()
        return row[0] if row else None

    return _call


@pytest.fixture
def expect_sqlstate():
    """with expect_sqlstate("ME429") as err: ...   then err.value is the psycopg error."""
    import psycopg

    @contextlib.contextmanager
    def _expect(code: str):
        with pytest.raises(psycopg.Error) as excinfo:
            yield excinfo
        got = excinfo.value.sqlstate
        assert got == code, f"expected SQLSTATE {code}, got {got}: {excinfo.value}"

    return _expect


@pytest.fixture
def new_namespace(connect, demo_catalog) -> Callable[..., str]:
    """new_namespace(name=None, catalog=<demo catalog> | None) -> namespace_id (a fresh uuid).

    Creates a namespace as the platform operator and loads the catalog into it
    (pass catalog=None to leave it empty).
    """
    conn = connect(namespace_id="")
    _missing = object()

    def _new(name: str | None = None, catalog: Any = _missing) -> str:
        from psycopg.types.json import Jsonb

        ns = str(uuid.uuid4())
        conn.execute("SELECT mec.create_namespace(p_name => %s, p_namespace_id => %s::uuid)",
                     (name or f"test-{ns[:8]}", ns))
        cat = demo_catalog if catalog is _missing else catalog
        if cat is not None:
            conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (ns,))
            conn.execute("SELECT mec.load_catalog(p_catalog => %s)", (Jsonb(cat),))
        return ns

    return _new


@pytest.fixture
def new_account(connect, demo_namespace_id) -> Callable[..., str]:
    """new_account(plan_id="starter", namespace_id=<demo>, external_id=None) -> a fresh account_id."""
    conns: dict[str, Any] = {}

    def _new(plan_id: str = "starter", namespace_id: str | None = None,
             external_id: str | None = None) -> str:
        ns = namespace_id or demo_namespace_id
        conn = conns.get(ns) or conns.setdefault(ns, connect(namespace_id=ns))
        account = str(uuid.uuid4())
        conn.execute(
            "SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => %s, p_external_id => %s)",
            (account, plan_id, external_id),
        )
        return account

    return _new


# ---------------------------------------------------------------- HTTP
@pytest.fixture(scope="session")
def make_token(jwt_secret, demo_namespace_id) -> Callable[..., str]:
    """make_token(role="mec_service", namespace_id=<demo>, account_id=None, ttl=300, **claims) -> HS256 JWT.

    Extra keyword claims are added (or override: e.g. exp=0 for an expired token,
    secret="..." to sign with another key).
    """
    import jwt

    def _make(role: str = "mec_service", namespace_id: str | None = None,
              account_id: str | None = None, ttl: int = 300, secret: str | None = None,
              **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "role": role,
            "namespace_id": namespace_id or demo_namespace_id,
            "sub": claims.pop("sub", f"pytest-{role}"),
            "iat": now,
            "exp": now + ttl,
        }
        if account_id:
            payload["account_id"] = account_id
        payload.update(claims)
        return jwt.encode(payload, secret or jwt_secret, algorithm="HS256")

    return _make


@pytest.fixture
def http() -> Iterator[Any]:
    """A requests.Session, closed after the test."""
    import requests

    session = requests.Session()
    yield session
    session.close()


@pytest.fixture
def api(http, api_url, make_token) -> Callable[..., Any]:
    """api(method, path, role="mec_service", token=<made>, **requests_kwargs) -> requests.Response.

    path is relative to <gateway>/api (e.g. "/rpc/check_entitlement"); role=None sends no token.
    """

    def _api(method: str, path: str, role: str | None = "mec_service", token: str | None = None,
             namespace_id: str | None = None, account_id: str | None = None, **kwargs: Any):
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is None and role is not None:
            token = make_token(role=role, namespace_id=namespace_id, account_id=account_id)
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        kwargs.setdefault("timeout", 30)
        return http.request(method, api_url + path, headers=headers, **kwargs)

    return _api


@pytest.fixture
def postgrest_client(api_url, make_token) -> Iterator[Callable[..., Any]]:
    """postgrest_client(role="mec_service", namespace_id=None, account_id=None, schema="public")
    -> postgrest.SyncPostgrestClient pointed at <gateway>/api with a token; closed after the test."""
    from postgrest import SyncPostgrestClient

    clients: list[Any] = []

    def _client(role: str = "mec_service", namespace_id: str | None = None,
                account_id: str | None = None, schema: str = "public", token: str | None = None):
        client = SyncPostgrestClient(api_url, schema=schema)
        client.auth(token or make_token(role=role, namespace_id=namespace_id, account_id=account_id))
        clients.append(client)
        return client

    yield _client
    for client in clients:
        with contextlib.suppress(Exception):
            client.aclose()
