import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers import TINY
from helpers.wandb_reader import find_wandb_file, read_run


@pytest.fixture
def hangup_host() -> dict:
    """A W&B host on this machine that reads each request's first line and closes the connection
    unanswered: {"url", "requests" (those lines, e.g. "HEAD / HTTP/1.1")}."""
    server = socket.create_server(("127.0.0.1", 0))
    host = {"url": f"http://127.0.0.1:{server.getsockname()[1]}", "requests": []}

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed at the end of the test
                return
            with connection, connection.makefile("rb") as request:
                connection.settimeout(5)
                try:
                    host["requests"].append(request.readline().decode("latin-1").strip())
                except OSError:
                    host["requests"].append("(nothing)")

    threading.Thread(target=serve, daemon=True).start()
    yield host
    server.close()


def test_a_key_without_network_trains_offline_and_wandb_never_tries_the_host(run_module, text_file, monkeypatch,
                                                                            tmp_path, hangup_host):
    """gpt2exp probes the host once (bounded) and starts W&B offline: W&B never asks the host to
    start the run (its GraphQL API), the online start-up that waits a minute and more for a host
    that does not answer, nor its own telemetry (a POST to /sdk/otel/...)."""
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", hangup_host["url"])
    tiny = [*TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=2"]
    result = run_module("gpt2exp.train", *tiny)
    assert result.returncode == 0, result.stderr
    assert "logging offline" in result.stdout
    assert hangup_host["requests"] == ["HEAD / HTTP/1.1"]
    [run_dir] = [p.parent for p in (tmp_path / "outputs").rglob(".hydra")]
    assert read_run(find_wandb_file(run_dir))["exit_code"] == 0  # find_wandb_file: an offline-run-* folder
    hangup_host["requests"].clear()
    result = run_module("gpt2exp.train", *tiny, "logger.mode=online")
    assert result.returncode == 2 and result.stderr.startswith("error: logger.mode=online: no answer from")
    assert hangup_host["requests"] == ["HEAD / HTTP/1.1"]


def test_ctrl_c_while_wandb_starts_exits_at_once(clean_env, monkeypatch, text_file, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    tiny = [*TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=2"]
    process = subprocess.Popen([sys.executable, "-m", "gpt2exp.train", *tiny], cwd=tmp_path, env=dict(os.environ),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wandb_dir = tmp_path / "outputs"
    deadline = time.monotonic() + 60
    while not list(wandb_dir.rglob("wandb/run-*")):  # W&B has begun to start the run
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - started < 25  # W&B's own start-up gives way only after 30 to 90 s
    assert process.returncode == 130 and stderr.strip().splitlines()[-1] == "error: interrupted", stderr


class _NotWandb(http.server.BaseHTTPRequestHandler):
    """A web server that is no W&B host: every request gets a 404 and its HTML page."""

    PAGE = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1>" + b"<p>x</p>" * 200

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.PAGE)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.PAGE)

    do_HEAD = do_GET = do_POST = answer  # noqa: N815 - http.server's naming

    def log_message(self, *args) -> None:
        pass


def test_a_host_that_is_no_wandb_server_gives_one_short_warning_and_one_offline_run(run_module, text_file, monkeypatch,
                                                                                   tmp_path):
    """The probe's HEAD gets an answer, so W&B tries to start the run there and gets an HTML page:
    one warning naming the host and the page's title, no W&B telemetry posted to it, and one W&B
    run folder (the offline one) whose sync command is the one W&B line."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotWandb)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_SILENT")  # as a user's shell has it: W&B's own lines show
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HOME", str(tmp_path))
    try:
        result = run_module("gpt2exp.train", *TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=2")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    console = (result.stdout + result.stderr).splitlines()
    [warning] = [line for line in console if "did not start the run" in line]
    assert warning.endswith(f"W&B: 127.0.0.1:{server.server_address[1]} did not start the run (404 Not Found); "
                            "logging offline")
    assert not any("<" in line or "Failed to export" in line for line in console)
    assert not any(r.startswith("POST /sdk/otel/") for r in server.requests), server.requests
    [run_dir] = [p.parent for p in (tmp_path / "outputs").rglob(".hydra")]
    [wandb_run] = [p for p in (run_dir / "wandb").iterdir() if p.is_dir() and not p.is_symlink()]
    assert wandb_run.name.startswith("offline-run-")
    wandb_lines = [line for line in console if line.startswith("wandb:") or "] W&B: " in line]
    assert [line.split("] ", 1)[-1] for line in wandb_lines if "Loaded credentials" not in line] == [
        warning.split("] ", 1)[1], f"W&B: offline run; upload it with: wandb sync {wandb_run}"]
