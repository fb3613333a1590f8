"""What the unit and end-to-end tests of hf bridge share."""

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2exp.config import ModelConfig, plain
from gpt2exp.modeling.checkpoint import save_checkpoint
from gpt2exp.modeling.model import GPTModel

HF_TINY = {"vocab_size": 50257, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}


@pytest.fixture(params=["safetensors", "bin"])
def hf_folder(request, tmp_path):
    """A small random GPT2LMHeadModel saved as transformers saves it."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**HF_TINY)).eval()
    folder = tmp_path / f"hf-{request.param}"
    model.save_pretrained(folder, safe_serialization=request.param == "safetensors")
    return folder, model


def save_hf_folder(folder: Path, **config) -> GPT2LMHeadModel:
    """A small random GPT2LMHeadModel with `config` changed, saved as transformers saves it."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**HF_TINY | config)).eval()
    model.save_pretrained(folder)
    return model


def tiny_checkpoint(path: Path, **model) -> Path:
    """A checkpoint of the tests' tiny model, `model` changing its config."""
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_MODEL | model)
    save_checkpoint(path, model=GPTModel(cfg).state_dict(), optimizer=None, step=1, config={"model": plain(cfg)})
    return path


REPO_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(http.server.BaseHTTPRequestHandler):
    """The Hugging Face hub's API for one model repo, as much as huggingface_hub.snapshot_download
    uses: the revision, the file tree, and each file (resolve) with its commit and etag."""

    repo: str
    files: dict[str, bytes]
    asked: list[str]

    def _answer(self, send_body: bool) -> None:
        self.asked.append(self.path)
        path, name = self.path.split("?")[0], self.path.split("?")[0].rsplit("/", 1)[-1]
        headers = {"Content-Type": "application/json"}
        if path.startswith(f"/api/models/{self.repo}/revision/"):
            body = json.dumps({"id": self.repo, "sha": REPO_COMMIT,
                               "siblings": [{"rfilename": file} for file in self.files]}).encode()
        elif path.startswith(f"/api/models/{self.repo}/tree/"):
            body = json.dumps([{"type": "file", "path": file, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                               for file, data in self.files.items()]).encode()
        elif path.startswith(f"/{self.repo}/resolve/") and name in self.files:
            body = self.files[name]
            headers = {"X-Repo-Commit": REPO_COMMIT, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_hub(tmp_path):
    """A Hugging Face hub on this machine that serves a small GPT-2 as openai-community/gpt2 (its
    config.json, model.safetensors and a pytorch_model.bin): (its address, the paths asked, the model)."""
    folder = tmp_path / "served"
    model = save_hf_folder(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    handler = type("Hub", (_Hub,), {"repo": "openai-community/gpt2", "asked": [],
                                     "files": {path.name: path.read_bytes() for path in folder.iterdir()}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.asked, model
    server.shutdown()
    server.server_close()
