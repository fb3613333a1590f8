"""What the tests share besides fixtures: tiny settings, the run folders an entrypoint left, and
the CUDA marker (`wandb_reader` reads offline W&B runs back)."""

import json
from pathlib import Path

import pytest
import torch

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Enough English for a tiny model to learn from in seconds.
SAMPLE_TEXT = "\n".join(
    f"Line {i}: the quick brown fox jumps over the lazy dog while every effort moves you forward."
    for i in range(400)
)

TINY = [
    "model.context_length=32",
    "model.emb_dim=32",
    "model.n_heads=2",
    "model.n_layers=1",
    "data.batch_size=4",
    "trainer.progress=false",
]

# A benchmark that takes seconds: the same tiny model, two timed steps, four new tokens.
TINY_BENCH = [
    "model.context_length=32", "model.emb_dim=32", "model.n_heads=2", "model.n_layers=1",
    "bench.batch_size=2", "bench.steps=2", "bench.warmup=1", "bench.new_tokens=4", "bench.corpus_mb=0.5",
]

TINY_MODEL = {"vocab_size": 50257, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 1,
              "drop_rate": 0.0, "qkv_bias": False}


def requires_cuda(test):
    """Mark ``test`` as a check of a CUDA-only path (tests/unit/test_cuda.py: the CUDA-graph decoding
    step, the fp16 gradient scaler, TF32, the CUDA RNG state and exact resume, pinned memory,
    Inductor-compiled training, NCCL under torchrun): ``pytest -m cuda`` selects these tests, and
    they run only where a CUDA GPU is present (skipped elsewhere, as in CPU-only CI). On a
    lent GPU machine, gpt2exp/benchmarks/gpu_check.sh runs them first."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def run_folders(root: Path) -> list[Path]:
    """Hydra run folders under ``root/outputs`` (those with a .hydra folder), oldest first."""
    return sorted(p.parent for p in (root / "outputs").rglob(".hydra"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def generate_runs(root: Path) -> list[Path]:
    """Run folders of ``gpt2exp.generate`` under ``root/outputs``, oldest first (a training run's
    folder has samples too, and checkpoints)."""
    return [p for p in run_folders(root) if (p / "samples.jsonl").exists() and not (p / "checkpoints").exists()]
