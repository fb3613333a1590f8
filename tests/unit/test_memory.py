"""The training-memory estimate (gpt2exp/benchmarks/memory.py) against the tensors a process
holds after an AdamW step, and README's table as the estimate prints it."""

from pathlib import Path

import pytest
import torch

from gpt2exp.benchmarks.memory import (
    bytes_per_parameter,
    lora_parameters,
    markdown_table,
    preset_models,
    state_bytes,
)
from gpt2exp.config import LoraConfig, ModelConfig
from gpt2exp.modeling.lora import apply_lora
from gpt2exp.modeling.model import GPTModel

ROOT = Path(__file__).resolve().parents[2]


def stepped(model: GPTModel) -> torch.optim.AdamW:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    tokens = torch.arange(16)[None]
    model(tokens, targets=tokens).backward()
    optimizer.step()
    return optimizer


def test_a_full_fine_tune_holds_16_bytes_a_parameter():
    model = GPTModel(ModelConfig(context_length=16, emb_dim=32, n_heads=2, n_layers=2))
    measured = state_bytes(model, stepped(model))  # AdamW's step counts add a few bytes
    assert measured == pytest.approx(bytes_per_parameter() * model.num_parameters(), rel=1e-3)


def test_lora_holds_the_frozen_base_and_trains_the_adapters_it_counts():
    cfg = ModelConfig(context_length=16, emb_dim=32, n_heads=2, n_layers=2, init="base", lora=LoraConfig(rank=4))
    base_parameters = cfg.num_parameters()
    model = apply_lora(GPTModel(cfg), {"init": "base", "sha256": "0" * 64})
    adapters = lora_parameters(cfg, cfg.lora)
    assert adapters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = base_parameters + adapters
    estimate = bytes_per_parameter(trained_share=adapters / total) * total
    assert state_bytes(model, stepped(model)) == pytest.approx(estimate, rel=1e-3)


def test_fsdp_divides_the_state_by_the_processes_and_bf16_replicas_add_autocasts_copies():
    assert [bytes_per_parameter(strategy="fsdp", world_size=n) for n in (2, 4, 8)] == [8, 4, 2]
    assert bytes_per_parameter(precision="bf16") == 18 and bytes_per_parameter(world_size=8) == 16


def test_the_readme_table_is_the_one_the_estimate_prints():
    assert markdown_table(preset_models(ROOT / "conf")) in (ROOT / "README.md").read_text(encoding="utf-8")
