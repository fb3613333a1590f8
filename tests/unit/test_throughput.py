"""Tokens/s and MFU in the training log, as nanoGPT prints them: each evaluation's line and its
metrics.jsonl record carry the interval's speed and, where the device's rated peak is known, the
model FLOPs utilisation against it; elsewhere the run says once that MFU is n/a."""

import json
import logging
import re

import pytest
import torch
from helpers import TINY

from gpt2exp.cli.entrypoint import typed
from gpt2exp.config import TrainConfig
from gpt2exp.data import build_data
from gpt2exp.modeling import flops
from gpt2exp.modeling.model import GPTModel
from gpt2exp.runs.tracking import Tracker
from gpt2exp.training.hooks import RunHooks, Sampler, job_peak_flops
from gpt2exp.training.interrupt import GracefulStop
from gpt2exp.training.optimizers import make_optimizer
from gpt2exp.training.trainer import Trainer

PEAK = 1e9  # FLOP/s: a made-up peak, so that a tiny CPU model's MFU is a visible fraction


def train(compose_train, text_file, run_dir, peak_flops: float | None) -> list[dict]:
    """Four steps of a tiny model, evaluated every two, through a run's hooks; metrics.jsonl's records."""
    cfg = typed(compose_train(*TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=4",
                              "trainer.eval_freq=2", "trainer.eval_iter=1", "decoding.max_new_tokens=2"), TrainConfig)
    torch.manual_seed(0)
    model = GPTModel(cfg.model)
    optimizer = make_optimizer(model, cfg.optimizer)
    data = build_data(cfg.data, context_length=cfg.model.context_length)
    with Tracker(run_dir, config={}, backends=()) as tracker, GracefulStop() as stop:
        sampler = Sampler(cfg.decoding, "The", model, tracker, total_steps=4)
        hooks = RunHooks(cfg, {}, model, optimizer, tracker, run_dir, sampler=sampler, stop=stop,
                         peak_flops=peak_flops)
        Trainer(model, optimizer, data, cfg.trainer, hooks, device=torch.device("cpu")).fit()
        per_token = flops.train_flops_per_token(model, cfg.model.context_length)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{**record, "flops_per_token": per_token} for record in records if "val/loss" in record]


def eval_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if re.match(r"step +\d+ \| epoch", r.getMessage())]


def test_each_evaluation_logs_its_tokens_per_second_and_mfu(compose_train, text_file, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gpt2exp.train")
    evals = train(compose_train, text_file, tmp_path, peak_flops=PEAK)
    assert [e["step"] for e in evals] == [0, 2, 4]
    assert "train/mfu" not in evals[0]  # before the first step: no speed yet
    lines = eval_lines(caplog)
    assert len(lines) == 3 and "MFU" not in lines[0]
    for record, line in zip(evals[1:], lines[1:]):
        speed = record["tokens_per_sec"]
        assert speed > 0 and record["train/mfu"] == pytest.approx(speed * record["flops_per_token"] / PEAK)
        assert line.endswith(f"| {speed:.0f} tok/s | MFU {record['train/mfu']:.1%}"), line


def test_without_a_known_peak_the_lines_carry_tokens_per_second_alone(compose_train, text_file, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gpt2exp.train")
    evals = train(compose_train, text_file, tmp_path, peak_flops=None)
    assert evals[-1]["tokens_per_sec"] > 0 and not any("train/mfu" in record for record in evals)
    lines = eval_lines(caplog)
    assert len(lines) == 3 and all(line.endswith(" tok/s") for line in lines)


def test_the_cpu_has_no_rated_peak_and_the_run_says_mfu_is_na(caplog):
    caplog.set_level(logging.INFO, logger="gpt2exp.train")
    assert job_peak_flops(torch.device("cpu"), "bf16") is None
    assert "MFU n/a: no rated bf16 peak known for cpu" in caplog.text


@pytest.mark.parametrize(("name", "precision", "peak"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12), ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA A100-SXM4-40GB", "fp32", 156e12), ("NVIDIA GeForce RTX 4090", "bf16", None),
])
def test_a_gpus_rated_peak_comes_from_its_name(monkeypatch, caplog, name, precision, peak):
    caplog.set_level(logging.INFO, logger="gpt2exp.train")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert flops.rated_peak(torch.device("cuda", 0), precision) == peak
    assert job_peak_flops(torch.device("cuda", 0), precision) == peak
    assert (f"MFU against the rated {precision} peak of {name}" in caplog.text) == (peak is not None)
