"""A product's webhook endpoint, as the Standard Webhooks spec asks one to be: it verifies every
delivery with the `standardwebhooks` library (signature and timestamp) and deduplicates by
`webhook-id`. It records every request it got and can fail on demand (the next N requests answer
500), so the tests see retries."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class Receiver:
    def __init__(self) -> None:
        self.secret: str | None = None
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # every request: id, status answered
        self.events: dict[str, dict[str, Any]] = {}  # verified and deduplicated, by webhook-id
        self.fail_next = 0
        self.always_fail = False
        self.rejected = 0  # deliveries that failed verification
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._handle(body, headers)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/pg_mec"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, body: bytes, headers: dict[str, str]) -> int:
        with self.lock:
            wid = headers.get("webhook-id", "")
            if self.always_fail or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                self.requests.append({"id": wid, "status": 500})
                return 500
            try:
                payload = Webhook(self.secret or "").verify(body, headers)
            except WebhookVerificationError:
                self.rejected += 1
                self.requests.append({"id": wid, "status": 400})
                return 400
            self.requests.append({"id": wid, "status": 200})
            # A consumer that deduplicates: a webhook-id seen before is acknowledged, not applied.
            if wid not in self.events:
                self.events[wid] = {"payload": payload, "raw": json.loads(body), "headers": headers}
            return 200

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e["payload"] for e in self.events.values() if e["payload"]["type"] == event_type]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
