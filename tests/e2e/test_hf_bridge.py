"""The Hugging Face bridge: start training from an HF-format GPT-2 folder (``model.init``) and
export a checkpoint that ``transformers`` loads (``python -m gpt2exp.export``), both offline."""
import json
import math
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, TINY_MODEL, read_jsonl, run_folders
from helpers.hf_bridge import REPO_COMMIT, save_hf_folder, tiny_checkpoint
from transformers import AutoTokenizer, GPT2LMHeadModel

from gpt2exp.config import ModelConfig
from gpt2exp.modeling.decoding import generate
from gpt2exp.modeling.model import GPTModel
from gpt2exp.tokenizer import get_encoding


def test_fine_tuning_from_an_hf_folder_starts_at_its_loss_and_lowers_it(hf_folder, tmp_path, text_file):
    folder, _ = hf_folder
    result = subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", *TINY, f"model.init={folder}", "data=text", f"data.path={text_file}",
         "trainer.max_steps=20", "trainer.eval_freq=10", "optimizer.lr=3e-3", "logger=none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    config = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["config"]["model"]
    assert (config["emb_dim"], config["n_layers"], config["context_length"], config["drop_rate"]) == (32, 2, 64, 0.0)
    assert config["init"] == str(folder.resolve()) and config["qkv_bias"] is True
    evals = [m["val/loss"] for m in read_jsonl(run_dir / "metrics.jsonl") if "val/loss" in m]
    assert evals[-1] < evals[0] - 1


def test_model_init_without_files_says_where_to_put_them(run_module, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # else, where the hub answers, the run would download GPT-2
    result = run_module("gpt2exp.train", *TINY, "model.init=gpt2", "logger=none")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: model.init=gpt2: not in the Hugging Face cache") and "model.init=<folder>" in line


def test_model_init_gpt2_downloads_its_config_and_safetensors_through_huggingface_hub(
        local_hub, run_module, tmp_path, text_file, monkeypatch):
    """With a hub that answers (one on this machine, through HF_ENDPOINT), model.init=gpt2 fetches
    its config.json and model.safetensors into the Hugging Face cache and trains from them; the
    next run finds them there and downloads nothing."""
    url, asked, _ = local_hub
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = [*TINY, "model.init=gpt2", "data=text", f"data.path={text_file}", "trainer.max_steps=2", "logger=none"]
    first = run_module("gpt2exp.train", *args, "hydra.run.dir=first")
    assert first.returncode == 0, first.stderr
    snapshot = tmp_path / "hf" / "hub" / "models--openai-community--gpt2" / "snapshots" / REPO_COMMIT
    assert sorted(path.name for path in snapshot.iterdir()) == ["config.json", "model.safetensors"]
    downloads = sorted(path.rsplit("/", 1)[-1] for path in asked if "/resolve/" in path)
    assert set(downloads) == {"config.json", "model.safetensors"}
    again = run_module("gpt2exp.train", *args, "hydra.run.dir=again")
    assert again.returncode == 0, again.stderr
    assert sorted(path.rsplit("/", 1)[-1] for path in asked if "/resolve/" in path) == downloads
    for run in ("first", "again"):
        config = torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True)["config"]["model"]
        assert config["init"] == str(snapshot.resolve()) and (config["emb_dim"], config["n_layers"]) == (32, 2)


def test_export_gives_a_folder_transformers_loads_with_the_same_logits_and_text(train_run, tmp_path):
    out = tmp_path / "exported"
    result = subprocess.run([sys.executable, "-m", "gpt2exp.export", f"ckpt={train_run}", f"out={out}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    hf_model = GPT2LMHeadModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "Every effort moves you"
    assert tokenizer(text)["input_ids"] == get_encoding().encode(text)
    checkpoint = torch.load(train_run / "checkpoints" / "last.pt", weights_only=True)
    model = GPTModel(ModelConfig(**checkpoint["config"]["model"])).eval()
    model.load_state_dict(checkpoint["model"])
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, model(ids), atol=1e-5, rtol=1e-5)
        theirs = hf_model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0]
    assert tokenizer.decode(theirs) == get_encoding().decode(generate(model, ids, max_new_tokens=8).token_ids[0])
    again = subprocess.run([sys.executable, "-m", "gpt2exp.export", f"ckpt={train_run}", f"out={out}"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists and is not an empty folder" in again.stderr


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | changes))


def eval_folder(run_module, folder: Path, text_file: Path) -> subprocess.CompletedProcess:
    return run_module("gpt2exp.eval", f"model.init={folder}", "data=text", f"data.path={text_file}",
                      "eval.stride=64", "logger=none")


def test_eval_of_an_hf_folder_with_another_layer_norm_epsilon_equals_transformers(run_module, tmp_path, text_file):
    text_file.write_text("\n".join(text_file.read_text().splitlines()[:30]))
    hf_model = save_hf_folder(tmp_path / "hf", layer_norm_epsilon=0.1, initializer_range=0.2)
    result = eval_folder(run_module, tmp_path / "hf", text_file)
    assert result.returncode == 0, result.stderr
    [run_dir] = [p for p in run_folders(tmp_path) if (p / "eval.json").exists()]
    report = json.loads((run_dir / "eval.json").read_text())
    ids = torch.tensor(get_encoding().encode(text_file.read_text()))
    nll = 0.0
    with torch.no_grad():  # disjoint windows of the context's 64 tokens, as stride 64 scores them
        for begin in range(0, len(ids) - 1, 64):
            window = ids[begin : begin + 65]
            logits = hf_model(window[None, :-1]).logits[0]
            nll += F.cross_entropy(logits, window[1:], reduction="sum").item()
    assert report["tokens"] == len(ids) - 1
    assert report["perplexity"] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5000])


def append_to(path: Path) -> None:
    path.write_bytes(path.read_bytes() * 2)


def not_a_pickle(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"garbage, no pickle")


@pytest.mark.parametrize(("damage", "message"), [
    (lambda f: edit_config(f, n_embd="32"), "config.json has n_embd='32'; it must be an integer"),
    (lambda f: edit_config(f, scale_attn_by_inverse_layer_idx=True),
     "config.json has scale_attn_by_inverse_layer_idx=True; only GPT-2's False is supported"),
    (lambda f: edit_config(f, model_type="gpt_neo"), "config.json has model_type='gpt_neo'; only GPT-2's 'gpt2'"),
    (lambda f: edit_config(f, n_layer=20000), "model.n_layers=20000 is not allowed: must be in [1, 1024]"),
    (lambda f: truncate(f / "model.safetensors"), "model.safetensors is not a whole safetensors file"),
    (lambda f: append_to(f / "model.safetensors"), "model.safetensors is not a whole safetensors file"),
    (not_a_pickle, "pytorch_model.bin is not a PyTorch state dict"),
], ids=["wrong-type", "inverse-layer-scaling", "model-type", "too-deep", "truncated", "oversized", "not-a-pickle"])
def test_a_bad_hf_folder_exits_2_with_one_line_naming_it(run_module, tmp_path, text_file, damage, message):
    folder = tmp_path / "hf"
    save_hf_folder(folder)
    damage(folder)
    result = eval_folder(run_module, folder, text_file)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: model.init: {folder}") and message in line, line
    assert not run_folders(tmp_path)


def run_export(ckpt: Path, out: Path, *, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """``python -m gpt2exp.export``, its files limited to `file_size_limit` bytes (``ulimit -f``)."""
    limit = resource.RLIMIT_FSIZE

    def limit_files() -> None:
        resource.setrlimit(limit, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, "-m", "gpt2exp.export", f"ckpt={ckpt}", f"out={out}"], cwd=ckpt.parent,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_files if file_size_limit else None)


def test_a_failed_export_leaves_nothing_behind_and_its_retry_succeeds(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "new" / "hf"
    failed = run_export(ckpt, out, file_size_limit=1 << 20)  # its 6.5 MB of weights pass no 1 MB limit
    assert failed.returncode == 2
    assert failed.stderr.strip() == f"error: out: cannot write '{out}' (File too large at '{out / 'model.safetensors'}')"
    assert sorted(tmp_path.iterdir()) == [ckpt]
    again = run_export(ckpt, out)
    assert again.returncode == 0, again.stderr
    assert GPT2LMHeadModel.from_pretrained(out).config.n_embd == TINY_MODEL["emb_dim"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["hf"]


def test_an_export_it_cannot_write_is_one_line(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    (tmp_path / "notes.txt").write_text("mine")
    result = run_export(ckpt, tmp_path / "notes.txt" / "hf")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: out: cannot write '{tmp_path / 'notes.txt' / 'hf'}'"), line
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(tmp_path.iterdir()) == [ckpt, tmp_path / "notes.txt"]
