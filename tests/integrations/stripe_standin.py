"""A local stand-in for the two Stripe Billing endpoints pg_mec sends usage to, speaking Stripe's
wire format: `POST /v1/billing/meter_events` and `POST /v1/billing/meter_event_adjustments`, form
encoded, `Authorization: Bearer <secret key>`, `Idempotency-Key` replays (same key and parameters:
the first answer again; other parameters: 400 `idempotency_error`), identifiers unique, timestamps
within the past 35 days or 5 minutes ahead, Stripe's error objects. It records every request and
fails on demand: a 500, a 429 with `Retry-After`, a hang, or a crash after receiving (the event is
taken, the connection drops before the answer).

test_stripe_usage_sync.py checks that the official `stripe` library is accepted by it."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


class StandIn:
    def __init__(self, api_key: str):
        self.api_key = api_key
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.events: dict[str, dict[str, Any]] = {}  # identifier -> accepted meter event
        self.cancelled: set[str] = set()
        self.idempotency: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = {}
        self.failures: list[dict[str, Any]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                standin._handle(self)

            def do_GET(self):  # noqa: N802
                standin._reply(self, 404, error("invalid_request_error", "Unrecognized request URL"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ control
    def fail_next(self, mode: str, count: int = 1, retry_after: int | None = None,
                  seconds: float = 0.0) -> None:
        """The next `count` requests: "500", "429" (with Retry-After), "hang" (no answer for
        `seconds`, then none at all), "slow" (answered after `seconds`) or "crash" (the request
        takes effect, no answer)."""
        with self.lock:
            for _ in range(count):
                self.failures.append({"mode": mode, "retry_after": retry_after, "seconds": seconds})

    def units(self, customer: str | None = None, event_name: str | None = None) -> Decimal:
        """What Stripe would bill: the values of accepted, not cancelled events."""
        with self.lock:
            return sum((Decimal(e["payload"]["value"]) for i, e in self.events.items()
                        if i not in self.cancelled
                        and (customer is None or e["payload"]["stripe_customer_id"] == customer)
                        and (event_name is None or e["event_name"] == event_name)), Decimal(0))

    # ------------------------------------------------------------ the wire
    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Request-Id", f"req_{int(time.time() * 1e6)}")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length).decode()
        form = dict(parse_qsl(raw, keep_blank_values=True))
        record = {"path": h.path, "headers": {k.lower(): v for k, v in h.headers.items()},
                  "form": form, "raw": raw}
        with self.lock:
            self.requests.append(record)
            failure = self.failures.pop(0) if self.failures else None
        auth = h.headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            return self._reply(h, 401, error("invalid_request_error",
                                             "Invalid API Key provided: " + auth[-4:]))
        if failure and failure["mode"] == "500":
            return self._reply(h, 500, error("api_error", "An unknown error occurred"))
        if failure and failure["mode"] == "429":
            extra = {"Retry-After": str(failure["retry_after"])} if failure["retry_after"] else {}
            return self._reply(h, 429, error("invalid_request_error",
                                             "Request rate limit exceeded", code="rate_limit"), extra)
        if failure and failure["mode"] == "hang":
            time.sleep(failure["seconds"])
            h.close_connection = True
            return
        if failure and failure["mode"] == "slow":
            time.sleep(failure["seconds"])
        key = h.headers.get("Idempotency-Key")
        with self.lock:
            if key is not None and key in self.idempotency:
                first_form, status, body = self.idempotency[key]
                if first_form != form:
                    status, body = 400, error(
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with.")
                    reply = (status, body, {})
                else:
                    reply = (status, body, {"Idempotent-Replayed": "true"})
            else:
                status, body = self._execute(h.path, form)
                if key is not None:
                    self.idempotency[key] = (form, status, body)
                reply = (status, body, {})
        if failure and failure["mode"] == "crash":
            h.close_connection = True
            return
        self._reply(h, *reply)

    def _execute(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        now = int(time.time())
        if path == "/v1/billing/meter_events":
            for p in ("event_name", "payload[stripe_customer_id]", "payload[value]"):
                if not form.get(p):
                    return 400, error("invalid_request_error", f"Missing required param: {p}.", param=p)
            try:
                Decimal(form["payload[value]"])
            except InvalidOperation:
                return 400, error("invalid_request_error", "payload[value] must be a number",
                                  param="payload[value]")
            ts = int(form.get("timestamp") or now)
            if ts < now - 35 * 86400 or ts > now + 300:
                return 400, error("invalid_request_error",
                                  "Timestamp must be within the past 35 days or up to 5 minutes in the future.",
                                  param="timestamp")
            identifier = form.get("identifier") or f"auto_{len(self.events)}_{now}"
            if identifier in self.events:
                return 400, error("invalid_request_error",
                                  f"An event already exists with identifier {identifier}.",
                                  param="identifier")
            event = {"object": "billing.meter_event", "created": now, "event_name": form["event_name"],
                     "identifier": identifier, "livemode": False,
                     "payload": {"stripe_customer_id": form["payload[stripe_customer_id]"],
                                 "value": form["payload[value]"]},
                     "timestamp": ts}
            self.events[identifier] = event
            return 200, event
        if path == "/v1/billing/meter_event_adjustments":
            for p in ("event_name", "type"):
                if not form.get(p):
                    return 400, error("invalid_request_error", f"Missing required param: {p}.", param=p)
            target = form.get("cancel[identifier]")
            if form["type"] != "cancel" or not target:
                return 400, error("invalid_request_error", "Only type=cancel with cancel[identifier] is supported.")
            event = self.events.get(target)
            if event is None or event["event_name"] != form["event_name"]:
                return 400, error("invalid_request_error", f"No such meter event: {target}",
                                  code="resource_missing", param="cancel[identifier]")
            if now - event["created"] > 86400:
                return 400, error("invalid_request_error",
                                  "Meter events can only be cancelled within 24 hours of being received.")
            self.cancelled.add(target)
            return 200, {"object": "billing.meter_event_adjustment", "cancel": {"identifier": target},
                         "event_name": form["event_name"], "livemode": False, "status": "pending",
                         "type": "cancel"}
        return 404, error("invalid_request_error", f"Unrecognized request URL (POST: {path}).")


def error(kind: str, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"type": kind, "message": message}
    if code:
        e["code"] = code
    if param:
        e["param"] = param
    return {"error": e}
