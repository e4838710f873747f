"""A mec-gateway process of a test's own (the release binary `scripts/mec up` built), configured
with the running one's settings plus the test's, on a free port. For tests that need another
configuration (a Stripe stand-in, a small pool, a statement timeout) or that kill a gateway."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, **settings: str):
        env = dict(os.environ)
        for line in (REPO / ".mec" / "gateway.env").read_text().splitlines():
            k, _, v = line.partition("=")
            if k:
                env[k] = v
        self.url = f"http://127.0.0.1:{free_port()}"
        env.update({"MEC_GATEWAY_ADDR": self.url.removeprefix("http://"), "MEC_LOG": "warn",
                    "MEC_WEBHOOK_INTERVAL_MS": "0"})
        env.update(settings)
        binary = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "mec-gateway"
        self.proc = subprocess.Popen([str(binary)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/ready", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the test gateway did not become ready")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
