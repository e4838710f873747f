"""Fixtures of the security tests: a login role of an application's own, and connections as it.

A login role other than the gateway's authenticator, a superuser or the database owner is what a
vendor's backend uses to call pg_mec from SQL; `app_role` makes one (member of mec_service, as
such a role would be) and drops it after the test."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from typing import Any, Callable, Iterator
from urllib.parse import urlparse, urlunparse

import pytest

# A catalog with one resource of each shape the tests need, in a namespace of its own.
SECURITY_CATALOG = {
    "resources": [
        {"resource_type": "runs", "kind": "metered"},
        {"resource_type": "un", "kind": "metered"},
        {"resource_type": "jobs", "kind": "concurrency"},
        {"resource_type": "storage", "kind": "gauge"},
    ],
    "plans": [
        {"plan_id": "basic", "default": True, "entitlements": {
            "runs": {"limit": 100, "period": "month"},
            "un": {"limit": None, "period": "month"},
            "jobs": {"limit": 2},
            "storage": {"limit": 50}}},
    ],
}


@pytest.fixture
def security_namespace(new_namespace) -> Callable[[], str]:
    """security_namespace() -> a new namespace with SECURITY_CATALOG."""
    return lambda: new_namespace(catalog=SECURITY_CATALOG)


def _url_as(base: str, user: str, password: str) -> str:
    u = urlparse(base)
    netloc = f"{user}:{password}@{u.hostname}:{u.port}"
    return urlunparse(u._replace(netloc=netloc))


@pytest.fixture
def app_role(db, database_url) -> Iterator[Callable[..., Any]]:
    """app_role(grant="mec_service") -> (role name, connect(**kw) -> psycopg connection as it).

    The role is LOGIN, NOSUPERUSER, granted `grant`; it and everything bound to it are dropped
    after the test."""
    import psycopg

    made: list[str] = []
    conns: list[Any] = []

    def _make(grant: str | None = "mec_service"):
        name = f"t_app_{secrets.token_hex(4)}"
        password = secrets.token_hex(12)
        db.execute(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER INHERIT PASSWORD \'{password}\'')
        if grant:
            db.execute(f'GRANT {grant} TO "{name}"')
        made.append(name)
        url = _url_as(database_url, name, password)

        def _connect(autocommit: bool = True):
            conn = psycopg.connect(url, autocommit=autocommit)
            conns.append(conn)
            return conn

        return name, _connect

    yield _make
    for c in conns:
        with contextlib.suppress(Exception):
            c.close()
    for name in made:
        with contextlib.suppress(Exception):
            db.execute("SELECT mec.unbind_role(%s)", (name,))
        with contextlib.suppress(Exception):
            db.execute(f'DROP OWNED BY "{name}"')
            db.execute(f'DROP ROLE "{name}"')


@pytest.fixture
def fresh_key() -> Callable[[str], str]:
    return lambda prefix="k": f"{prefix}-{uuid.uuid4()}"
