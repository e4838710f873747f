"""Auth0 deliveries as Auth0 sends them: a custom-webhook log stream posts its log events (one
`{"log_id", "data"}` record each; as a JSON array, JSON lines or one object), with the stream's
Authorization token as the `Authorization` header; a post-user-registration Action posts what its
code sends, here `{"user": event.user}`."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any


def log_id() -> str:
    # Auth0 log ids are 56-digit numbers, as strings.
    return "900" + str(uuid.uuid4().int).rjust(53, "0")[:53]


def user_id() -> str:
    return f"auth0|{uuid.uuid4().hex[:24]}"


def record(event_type: str, user: str | None, description: str = "", lid: str | None = None) -> dict[str, Any]:
    lid = lid or log_id()
    data: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "type": event_type,
        "description": description,
        "connection": "Username-Password-Authentication",
        "connection_id": "con_" + uuid.uuid4().hex[:16],
        "client_id": uuid.uuid4().hex,
        "client_name": "Acme App",
        "ip": "203.0.113.7",
        "user_agent": "Chrome 131.0.0 / Mac OS X 10.15.7",
        "details": {"body": {"tenant": "acme", "connection": "Username-Password-Authentication"}},
        "hostname": "acme.eu.auth0.com",
        "user_name": "jenny@example.com",
        "strategy": "auth0",
        "strategy_type": "database",
        "log_id": lid,
        "tenant_name": "acme",
    }
    if user is not None:
        data["user_id"] = user
    return {"log_id": lid, "data": data}


def signup(user: str, lid: str | None = None) -> dict[str, Any]:
    return record("ss", user, "", lid)


def deleted(user: str, lid: str | None = None) -> dict[str, Any]:
    return record("sdu", user, "Successful user deletion", lid)


def login(user: str) -> dict[str, Any]:
    return record("s", user, "Successful login")


def json_array(records: list[dict[str, Any]]) -> bytes:
    return json.dumps(records).encode()


def json_lines(records: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode() + b"\n"


def action_registration(user: str) -> dict[str, Any]:
    """What `exports.onExecutePostUserRegistration` posts with `{user: event.user}`."""
    return {"user": {"user_id": user, "email": "jenny@example.com", "email_verified": False,
                     "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                     "identities": [{"connection": "Username-Password-Authentication",
                                     "provider": "auth0", "user_id": user.split("|", 1)[1],
                                     "isSocial": False}],
                     "app_metadata": {}, "user_metadata": {}}}
