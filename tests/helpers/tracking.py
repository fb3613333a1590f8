"""What the unit and end-to-end tests of tracking share."""

import http.server
import threading
import time

import pytest


class _Answer(http.server.BaseHTTPRequestHandler):
    """A W&B host that answers, but takes forever over a run's start (POST /graphql)."""

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(404)
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        time.sleep(120)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No W&B mode or key in the environment, an empty home folder, and a W&B host that answers
    (an HTTP server on this machine)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    yield tmp_path
    server.shutdown()
    server.server_close()
