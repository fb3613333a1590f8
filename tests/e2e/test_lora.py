"""LoRA fine-tuning (`model.lora`): only the adapters train, checkpoints hold them and the base's
identity, and generate, eval, resume and export work on a LoRA run as on any run."""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE_TEXT, TINY, read_jsonl, run_folders
from helpers.lora import RANK
from peft import PeftModel
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2exp.modeling.trained import load_trained_model

HF_TINY = {"vocab_size": 50257, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}


def save_hf_model(folder: Path, seed: int) -> Path:
    """A small random GPT2LMHeadModel saved as transformers saves it."""
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(**HF_TINY)).save_pretrained(folder)
    return folder


def lora_train(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", *TINY, f"model.init={root / 'hf'}", f"model.lora.rank={RANK}",
         "data=text", f"data.path={root / 'corpus.txt'}", "trainer.eval_freq=2", "optimizer.lr=1e-2",
         "logger=none", *overrides],
        cwd=root, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """A LoRA run (rank 4 on all four block layers) of 4 steps on a tiny HF GPT-2 folder."""
    root = tmp_path_factory.mktemp("lora")
    (root / "corpus.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    save_hf_model(root / "hf", seed=0)
    result = lora_train(root, "trainer.max_steps=4")
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(root)
    return run_dir


def test_a_lora_checkpoint_holds_the_adapter_its_optimizer_state_and_the_base_identity(lora_run):
    checkpoint = torch.load(lora_run / "checkpoints" / "last.pt", weights_only=True)
    names = set(checkpoint["model"])
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)
    assert len(names) == 2 * 4 * 2
    states = checkpoint["optimizer"]["state"]
    assert sum(s["exp_avg"].numel() for s in states.values()) == sum(t.numel() for t in checkpoint["model"].values())
    base = checkpoint["extra"]["lora_base"]
    assert base["init"] == str((lora_run.parents[2] / "hf").resolve()) and len(base["sha256"]) == 64
    assert checkpoint["config"]["model"]["lora"]["rank"] == RANK


def test_a_lora_run_resumes_on_the_curve_of_an_uninterrupted_one(lora_run, tmp_path):
    """lora_run's 4 steps (a copy), resumed to 6, against 6 steps straight."""
    root = lora_run.parents[2]
    straight = lora_train(root, "trainer.max_steps=6", f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr
    shutil.copytree(lora_run, tmp_path / "resumed")
    resumed = lora_train(root, "trainer.max_steps=6", f"hydra.run.dir={tmp_path / 'resumed'}",
                         f"trainer.resume={tmp_path / 'resumed'}")
    assert resumed.returncode == 0, resumed.stderr
    losses = [[m["val/loss"] for m in read_jsonl(tmp_path / run / "metrics.jsonl") if "val/loss" in m]
              for run in ("straight", "resumed")]
    assert losses[1] == pytest.approx(losses[0], abs=1e-4) and losses[0][-1] < losses[0][0]


@pytest.fixture(scope="module")
def merged(lora_run, tmp_path_factory) -> Path:
    """lora_run exported (``python -m gpt2exp.export``, the adapters merged) to a Hugging Face folder."""
    out = tmp_path_factory.mktemp("merged") / "hf"
    result = subprocess.run([sys.executable, "-m", "gpt2exp.export", f"ckpt={lora_run}", f"out={out}"],
                            cwd=out.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def test_generate_and_eval_read_a_lora_run_as_its_merged_model(lora_run, merged, run_module, tmp_path):
    root = lora_run.parents[2]
    generated = run_module("gpt2exp.generate", f"ckpt={lora_run}", "logger=none", "decoding.max_new_tokens=4")
    assert generated.returncode == 0, generated.stderr
    scores = []
    for source in (f"ckpt={lora_run}", f"model.init={merged}"):
        result = run_module("gpt2exp.eval", source, "data=text", f"data.path={root / 'corpus.txt'}", "eval.stride=32",
                            "logger=none", f"hydra.run.dir={tmp_path / str(len(scores))}")
        assert result.returncode == 0, result.stderr
        scores.append(json.loads((tmp_path / str(len(scores)) / "eval.json").read_text())["mean_nll"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_export_merges_a_lora_run_with_the_unmerged_logits(lora_run, merged):
    unmerged, _ = load_trained_model(lora_run / "checkpoints" / "last.pt", merge_lora=False)
    exported = GPT2LMHeadModel.from_pretrained(merged).eval()
    base = GPT2LMHeadModel.from_pretrained(lora_run.parents[2] / "hf").eval()
    tokens = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        expected = unmerged.eval()(tokens)
        torch.testing.assert_close(exported(tokens).logits, expected, atol=1e-5, rtol=0)
        assert (base(tokens).logits - expected).abs().max() > 1e-3  # the adapter changed the model


def test_export_without_merging_gives_a_base_and_a_peft_adapter_with_the_same_logits(lora_run, run_module, tmp_path):
    out = tmp_path / "parts"
    result = run_module("gpt2exp.export", f"ckpt={lora_run}", f"out={out}", "merge_lora=false")
    assert result.returncode == 0, result.stderr
    unmerged, _ = load_trained_model(lora_run / "checkpoints" / "last.pt", merge_lora=False)
    peft_model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(out / "base"), out / "adapter").eval()
    tokens = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(tokens).logits, unmerged.eval()(tokens), atol=1e-5, rtol=0)


def test_a_lora_checkpoint_refuses_another_base_or_none_in_one_line(lora_run, run_module, tmp_path):
    hf = lora_run.parents[2] / "hf"
    kept = tmp_path / "kept"
    shutil.move(hf, kept)
    try:
        save_hf_model(hf, seed=1)
        other = run_module("gpt2exp.export", f"ckpt={lora_run}", f"out={tmp_path / 'out'}")
        before = sorted(p.name for p in (lora_run / "checkpoints").iterdir())
        resumed = lora_train(lora_run.parents[2], "trainer.max_steps=6", f"trainer.resume={lora_run}")
        shutil.rmtree(hf)
        missing = run_module("gpt2exp.generate", f"ckpt={lora_run}", "logger=none")
    finally:
        shutil.rmtree(hf, ignore_errors=True)
        shutil.move(kept, hf)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "is a LoRA adapter of another base" in other.stderr and not (tmp_path / "out").exists()
    assert resumed.returncode == 2 and resumed.stderr.count("\n") == 1, resumed.stderr
    assert resumed.stderr.startswith("error: trainer.resume: ") and "is a LoRA adapter of another base" in resumed.stderr
    assert sorted(p.name for p in (lora_run / "checkpoints").iterdir()) == before
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "is a LoRA adapter whose base cannot be read" in missing.stderr and not run_folders(tmp_path)


@pytest.mark.parametrize(("override", "message"), [
    ("model.lora.rank=4 model.lora.targets=[attn.q]", "model.lora.targets: 'attn.q' matches no Linear layer of the model's blocks "
                                    "(they are attn.qkv, attn.out_proj, ff.fc, ff.out_proj)"),
    ("model.lora.rank=33", "model.lora.rank=33 is larger than layer attn.qkv (32 -> 96): must be at most 32"),
], ids=["target-matches-nothing", "rank-larger-than-layer"])
def test_a_bad_lora_setting_exits_2_in_one_line_and_leaves_nothing(lora_run, override, message, tmp_path):
    root = lora_run.parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", *TINY, f"model.init={root / 'hf'}", "data=text",
         f"data.path={root / 'corpus.txt'}", "logger=none", *override.split()],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {message}\n"
    assert not run_folders(tmp_path)


def test_a_gpt2exp_checkpoint_is_a_base_and_the_lora_run_starts_at_its_loss(trained_run, text_file, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", *TINY, f"model.init={trained_run}", f"model.lora.rank={RANK}",
         "data=text", f"data.path={text_file}", "trainer.max_steps=2", "trainer.eval_freq=2", "logger=none",
         "hydra.run.dir=lora"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    base_evals = [m["val/loss"] for m in read_jsonl(trained_run / "metrics.jsonl") if "val/loss" in m]
    lora_evals = [m["val/loss"] for m in read_jsonl(tmp_path / "lora" / "metrics.jsonl") if "val/loss" in m]
    assert lora_evals[0] == pytest.approx(base_evals[-1], abs=1e-4)  # B starts at zero: the base's own loss
    checkpoint = torch.load(tmp_path / "lora" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["extra"]["lora_base"]["init"] == str((trained_run / "checkpoints" / "last.pt").resolve())
    model, _ = load_trained_model(tmp_path / "lora" / "checkpoints" / "last.pt")
    assert model.cfg.emb_dim == 32 and model.cfg.lora.rank == 0  # the merged model, the base's shape


def test_readme_lora_commands_run(run_module, tmp_path):
    """The README's "LoRA fine-tuning" commands as written, with a tiny random HF GPT-2 in hf/gpt2."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    save_hf_model(tmp_path / "hf" / "gpt2", seed=0)
    (tmp_path / "mine.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    block = re.search(r"## LoRA fine-tuning.*?```bash\n(.*?)```", readme, re.S).group(1)
    shrink = ["trainer.max_steps=2", "trainer.eval_freq=2", "trainer.eval_iter=1", "data.batch_size=2",
              "trainer.progress=false", "logger=none"]
    for line in block.strip().splitlines():
        _, _, module, *args = shlex.split(line.split("  #")[0])
        result = run_module(module, *args, *(shrink if module == "gpt2exp.train" else []))
        assert result.returncode == 0, (line, result.stderr)
    assert (tmp_path / "exported" / "gpt2-lora" / "model.safetensors").is_file()
    assert (tmp_path / "exported" / "gpt2-lora-parts" / "adapter" / "adapter_model.safetensors").is_file()
    # The sweep over the rank is one multirun, a job for each rank.
    [sweep] = {job.parents[1] for job in tmp_path.glob("outputs/multirun/*/*/*/checkpoints")}
    ranks = [torch.load(job / "checkpoints" / "last.pt", weights_only=True)["model"]["blocks.0.attn.qkv.lora_A.weight"]
             .shape[0] for job in sorted(sweep.iterdir()) if (job / "checkpoints").is_dir()]
    assert ranks == [4, 8]
