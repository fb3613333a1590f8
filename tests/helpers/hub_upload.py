"""A Hugging Face hub on this machine that takes uploads: as much of the hub's API as
huggingface_hub's create_repo and upload_folder use (make a repo, check a README's metadata, ask
how each file goes up, one commit with the files inline)."""

import base64
import http.server
import json
import threading

import pytest


class _UploadHub(http.server.BaseHTTPRequestHandler):
    repos: dict[str, dict[str, bytes]]  # repo id: {path: the file's bytes}, the last commit's
    asked: list[str]  # "POST /api/repos/create", ...
    refuse: bool  # answer 403 to every call (a token without write access)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        self.asked.append(f"POST {path}")
        base = f"http://{self.headers['Host']}"
        if self.refuse or not self.headers.get("Authorization", "").startswith("Bearer "):
            self._send(403, {"error": "You don't have the rights to create a model under this namespace"})
        elif path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request['organization']}/{request['name']}"
            self.repos.setdefault(repo, {})
            self._send(200, {"url": f"{base}/{repo}"})
        elif path == "/api/validate-yaml":
            self._send(200, {"errors": [], "warnings": []})
        elif path.startswith("/api/models/") and "/preupload/" in path:
            files = json.loads(body)["files"]
            self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in files]})
        elif path.startswith("/api/models/") and "/commit/" in path:
            repo = path.removeprefix("/api/models/").split("/commit/")[0]
            records = [json.loads(line) for line in body.decode().splitlines()]
            self.repos[repo] = {r["value"]["path"]: base64.b64decode(r["value"]["content"])
                                for r in records if r["key"] == "file"}
            self._send(200, {"commitUrl": f"{base}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        else:
            self._send(404, {"error": "not found"})

    def do_HEAD(self) -> None:  # noqa: N802 - the reachability probe
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def upload_hub(monkeypatch):
    """The hub above, named by HF_ENDPOINT (and huggingface_hub's ENDPOINT, for in-process use),
    with a token in HF_TOKEN: its handler class (`repos`, `asked`, `refuse`) and address."""
    import huggingface_hub.constants

    handler = type("Hub", (_UploadHub,), {"repos": {}, "asked": [], "refuse": False})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield handler, url
    server.shutdown()
    server.server_close()
