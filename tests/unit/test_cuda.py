"""The CUDA-only paths, on a CUDA GPU (``pytest -m cuda``; each test is skipped without one): the
CUDA-graph decoding step against eager decoding, and a capture that really fails; the fp16
gradient scaler; bf16 by default and TF32; the CUDA RNG state in checkpoints and an exact resume;
pinned memory; Inductor-compiled training against eager; torchrun with one GPU as a job of one
(NCCL, DDP)."""

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, read_jsonl, requires_cuda

from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig, TrainerConfig
from gpt2exp.data import build_data
from gpt2exp.devices import Precision, resolve_precision
from gpt2exp.modeling import decoding
from gpt2exp.modeling.decoding import generate
from gpt2exp.modeling.model import GPTModel
from gpt2exp.training.optimizers import make_optimizer
from gpt2exp.training.rng import capture_rng_state, restore_rng_state
from gpt2exp.training.run import RunContext, plan_run
from gpt2exp.training.trainer import Hooks, Trainer

DEVICE = "cuda"  # the device of the training subprocesses

MODEL = ModelConfig(context_length=64, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0)
SAMPLED = {"temperature": 1.5, "top_k": 50}
PROMPTS = [[5, 6], [7, 8, 9, 10, 11, 12, 13]]
# A training run of seconds on the GPU, in fp32, with dropout (so the CUDA generator matters) and a
# sample (through the CUDA graph) every 3 steps.
RUN = [*TINY, "model.drop_rate=0.1", "trainer.precision=fp32", "trainer.eval_freq=3", "trainer.eval_iter=2",
       "trainer.sample_freq=3", "decoding.max_new_tokens=8", "optimizer.schedule=constant",
       "optimizer.warmup_steps=0", "logger=none"]


@pytest.fixture(autouse=True)
def ieee_fp32():
    """fp32 matmuls in full precision (a run's `resolve_precision` turns TF32 on), restored after."""
    if not torch.cuda.is_available():
        yield
        return
    before = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    yield
    torch.backends.cuda.matmul.fp32_precision = before


@pytest.fixture
def counted_graphs(monkeypatch) -> dict:
    """The real CUDA-graph capture, counting captures and replays."""
    counts = {"captures": 0, "replays": 0}

    def capture(step, device):
        replay = decoding.capture_cuda_graph(step, device)
        counts["captures"] += 1

        def counted():
            counts["replays"] += 1
            return replay()

        return counted

    monkeypatch.setitem(decoding.GRAPH_CAPTURES, "cuda", capture)
    return counts


def graph_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gpt2exp.modeling.decoding" and r.levelno == logging.WARNING]


def cuda_generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator("cuda").manual_seed(seed) for seed in seeds]


@requires_cuda
def test_cuda_graph_decoding_equals_eager_and_recomputing_in_fp32(counted_graphs, caplog):
    """The cached steps replay a CUDA graph (no fallback) and pick what the eager cached steps
    and recomputing pick, greedy and sampled, with padding and past the context."""
    torch.manual_seed(0)
    model = GPTModel(MODEL).cuda().eval()
    ways = {"graph": {}, "eager": {"cuda_graph": False}, "recompute": {"use_cache": False}}
    greedy = {name: generate(model, PROMPTS, max_new_tokens=80, **kw) for name, kw in ways.items()}
    sampled = {name: generate(model, PROMPTS, max_new_tokens=20, generator=cuda_generators(1, 2), **SAMPLED, **kw)
               for name, kw in ways.items()}
    assert counted_graphs["captures"] == 2 and counted_graphs["replays"] == (64 - 7) + 19
    assert not graph_warnings(caplog)
    assert len(greedy["graph"].new_tokens[1]) == 80
    for way in ("eager", "recompute"):
        for runs in (greedy, sampled):
            assert runs["graph"].new_tokens == runs[way].new_tokens, way
            torch.testing.assert_close(torch.tensor(runs["graph"].logprobs), torch.tensor(runs[way].logprobs),
                                       atol=1e-4, rtol=0)


@requires_cuda
@pytest.mark.parametrize("settings", [{"temperature": 0.0}, SAMPLED], ids=["greedy", "sampled"])
def test_cuda_graph_decoding_under_bf16_scores_as_recomputing_does(settings, counted_graphs, caplog):
    """Under bf16 autocast (a bf16 KV cache, weights cast once before the capture) the graph's
    log-probs are those of the whole sequence recomputed under autocast; a greedy pick is the
    recomputed argmax or within bf16's rounding of it."""
    torch.manual_seed(0)
    model = GPTModel(MODEL).cuda().eval()
    width = max(map(len, PROMPTS))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = generate(model, PROMPTS, max_new_tokens=40, generator=cuda_generators(1, 2), **settings)
        tokens = torch.tensor([[0] * (width - len(p)) + row for p, row in zip(PROMPTS, out.token_ids)], device="cuda")
        pad = torch.tensor([width - len(p) for p in PROMPTS], device="cuda")
        with torch.no_grad():
            reference = torch.log_softmax(model(tokens[:, :-1], pad=pad).float(), dim=-1)[:, width - 1 :]
    assert counted_graphs["replays"] == 39 and not graph_warnings(caplog)
    chosen = reference.gather(2, tokens[:, width:, None])[..., 0]
    torch.testing.assert_close(torch.tensor(out.logprobs, device="cuda"), chosen, atol=0.02, rtol=0)
    if not settings["temperature"]:
        assert bool((chosen >= reference.max(dim=-1).values - 0.02).all())


@requires_cuda
def test_a_capture_that_really_fails_warns_once_and_decoding_goes_on(monkeypatch, caplog):
    """A host sync inside the captured step makes CUDA refuse the capture: one warning names
    the error, and this call and the next decode eagerly with the same tokens."""
    monkeypatch.setitem(decoding.GRAPH_CAPTURES, "cuda", decoding.capture_cuda_graph)  # put back after the test
    torch.manual_seed(0)
    model = GPTModel(MODEL).cuda().eval()
    decode_hidden = model.decode_hidden

    def syncing_decode_hidden(*args):
        hidden = decode_hidden(*args)
        if torch.cuda.is_current_stream_capturing():
            hidden.sum().item()  # a copy to the host: not allowed while capturing
        return hidden

    monkeypatch.setattr(model, "decode_hidden", syncing_decode_hidden)
    runs = [generate(model, PROMPTS, max_new_tokens=30, generator=cuda_generators(1, 2), **SAMPLED) for _ in range(2)]
    eager = generate(model, PROMPTS, max_new_tokens=30, generator=cuda_generators(1, 2), cuda_graph=False, **SAMPLED)
    [warning] = graph_warnings(caplog)
    assert warning.startswith("CUDA graph decoding failed (") and "decoding without it" in warning
    assert "cuda" not in decoding.GRAPH_CAPTURES
    for run in runs:
        assert run.new_tokens == eager.new_tokens
        torch.testing.assert_close(torch.tensor(run.logprobs), torch.tensor(eager.logprobs), atol=1e-4, rtol=0)


def tiny_data(text_file: Path, tmp_path: Path, *, pin_memory: bool = False):
    cfg = DataConfig(source="text", path=str(text_file), batch_size=4, cache_dir=str(tmp_path / "cache"))
    return build_data(cfg, context_length=32, seed=0, pin_memory=pin_memory)


class Record(Hooks):
    """Each step's metrics and the token embedding after it."""

    def __init__(self, model: GPTModel):
        self.model, self.steps = model, []

    def on_step(self, step: int, metrics: dict) -> None:
        self.steps.append((metrics, self.model.tok_emb.weight.detach().clone()))


@requires_cuda
def test_fp16_scaler_skips_overflowing_steps_and_then_trains(text_file, tmp_path, monkeypatch):
    """fp16 on CUDA scales the loss: a step whose gradients overflow (here every step until the
    scale, started at 2^40, has halved enough) leaves the weights as they were and does not
    end the run; the steps after it train."""
    precision = resolve_precision("fp16", torch.device("cuda"))
    real_scaler = Precision.grad_scaler
    monkeypatch.setattr(Precision, "grad_scaler", lambda self: torch.amp.GradScaler(
        self.device_type, init_scale=2.0**40, enabled=real_scaler(self).is_enabled()))
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0)).cuda()
    initial = model.tok_emb.weight.detach().clone()
    record = Record(model)
    cfg = TrainerConfig(max_steps=60, eval_freq=60, eval_iter=1, progress=False)
    Trainer(model, make_optimizer(model, OptimizerConfig(lr=1e-3)), tiny_data(text_file, tmp_path), cfg, record,
            device=torch.device("cuda"), precision=precision).fit()
    grad_norms = [metrics["train/grad_norm"] for metrics, _ in record.steps]
    overflowed = [not math.isfinite(norm) for norm in grad_norms]
    assert overflowed[0] and not overflowed[-1], grad_norms
    for (_, weights), skipped in zip(record.steps, overflowed):
        if not skipped:
            break
        assert torch.equal(weights, initial)  # a skipped step changed nothing
    assert not torch.equal(record.steps[-1][1], initial)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@requires_cuda
def test_tf32_is_on_from_ampere_on():
    """`resolve_precision` on a CUDA device of compute capability 8 or more makes fp32 matmuls
    TF32 (about 1e-3 relative error instead of 1e-6); older GPUs keep full fp32."""
    a, b = torch.randn(2, 512, 512, device="cuda", dtype=torch.float64).unbind()
    exact = a @ b

    def error() -> float:
        return ((a.float() @ b.float()).double() - exact).abs().max().item() / exact.abs().max().item()

    full = error()
    resolve_precision("fp32", torch.device("cuda"))
    if torch.cuda.get_device_capability()[0] >= 8:
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert error() > 30 * full, (error(), full)
    else:
        assert error() == full


@requires_cuda
def test_auto_precision_on_cuda_is_bf16_where_the_gpu_has_it():
    cuda = torch.device("cuda")
    expected = "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    assert resolve_precision("auto", cuda) == Precision(expected, "cuda")
    assert resolve_precision("fp16", cuda).grad_scaler().is_enabled()
    assert not resolve_precision("bf16", cuda).grad_scaler().is_enabled()


@requires_cuda
def test_checkpointed_rng_state_puts_the_cuda_generator_back(tmp_path):
    torch.cuda.manual_seed_all(3)
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    expected = torch.rand(8, device="cuda")
    torch.rand(1000, device="cuda")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(8, device="cuda"), expected)


def train(cwd: Path, *args: str, launcher: tuple[str, ...] = ("-m", "gpt2exp.train"),
          env: dict | None = None) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, *launcher, *RUN, f"trainer.device={DEVICE}", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=300, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    assert "graph decoding failed" not in result.stdout + result.stderr  # its samples replayed the CUDA graph
    return result


def batch_losses(run_dir: Path) -> list[float]:
    return [m["train/batch_loss"] for m in read_jsonl(run_dir / "metrics.jsonl") if "train/batch_loss" in m]


@requires_cuda
def test_a_resumed_cuda_run_continues_the_curve_with_its_dropout(text_file, tmp_path):
    """Six steps, then six more from the checkpoint: the losses of twelve straight steps. Dropout
    draws from the CUDA generator, so a resume that lost its state would draw other masks (a
    difference of ~1e-2), as would a sample (a graph capture) that moved the generator: the
    straight run samples at step 6, after its checkpoint. Kernels that add atomically leave
    ~1e-6, hence the tolerance."""
    data = ["data=text", f"data.path={text_file}"]
    train(tmp_path, *data, "trainer.max_steps=12", "hydra.run.dir=straight")
    train(tmp_path, *data, "trainer.max_steps=6", "hydra.run.dir=resumed")
    resumed = train(tmp_path, *data, "trainer.max_steps=12", "hydra.run.dir=resumed",
                    f"trainer.resume={tmp_path / 'resumed'}")
    assert "resuming" in resumed.stdout
    straight, continued = batch_losses(tmp_path / "straight"), batch_losses(tmp_path / "resumed")
    assert len(straight) == len(continued) == 12
    assert continued == pytest.approx(straight, abs=1e-4)


@requires_cuda
def test_a_cuda_run_pins_its_batches_in_memory(compose_train, text_file, tmp_path, monkeypatch):
    """Batches for a CUDA device come from page-locked memory (fast, asynchronous copies)."""
    monkeypatch.chdir(tmp_path)
    plans = {device: plan_run(cli.typed(compose_train(*RUN, "data=text", f"data.path={text_file}",
                                                      f"trainer.device={device}"), TrainConfig),
                              RunContext(tmp_path / device, tmp_path, resume_command="python -m gpt2exp.train"))
             for device in ("cuda", "cpu")}
    inputs, targets = next(iter(plans["cuda"].data.train_loader))
    assert inputs.is_pinned() and targets.is_pinned()
    assert not next(iter(plans["cpu"].data.train_loader))[0].is_pinned()


@requires_cuda
def test_inductor_compiled_training_equals_eager(text_file, tmp_path):
    """trainer.compile with Inductor (the default backend; the CPU tests use a tracing-only
    one): the same losses as eager training on the GPU, in fp32."""

    def run(compile_: bool) -> list[float]:
        torch.manual_seed(0)
        model = GPTModel(ModelConfig(context_length=32, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0)).cuda()
        cfg = TrainerConfig(max_steps=8, eval_freq=4, eval_iter=2, compile=compile_, progress=False)
        record = Record(model)
        state = Trainer(model, make_optimizer(model, OptimizerConfig(lr=1e-3)), tiny_data(text_file, tmp_path),
                        cfg, record, device=torch.device("cuda")).fit()
        return [metrics["train/batch_loss"] for metrics, _ in record.steps] + [p.val_loss for p in state.history]

    eager, compiled = run(False), run(True)
    assert len(compiled) == 8 + 3
    assert compiled == pytest.approx(eager, abs=1e-4)


JOB_OF_ONE = """
from gpt2exp.training import distributed
from gpt2exp.train import main

# A job of one process still joins a process group (NCCL for CUDA tensors) and trains under DDP.
distributed.World.distributed = property(lambda self: True)
main()
"""


@requires_cuda
def test_torchrun_on_one_gpu_trains_over_nccl_as_one_process_does(text_file, tmp_path):
    """torchrun with one process per GPU, run as a distributed job of one: the process group
    (gloo for CPU tensors, NCCL for CUDA ones), DDP on the GPU and rank 0's collectives, the
    losses of a plain run."""
    (tmp_path / "job_of_one.py").write_text(JOB_OF_ONE, encoding="utf-8")
    data = ["data=text", f"data.path={text_file}", "trainer.max_steps=6"]
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(tmp_path / "job_of_one.py"))
    job = train(tmp_path, *data, "hydra.run.dir=job", launcher=torchrun, env={"NCCL_DEBUG": "INFO"})
    assert "NCCL INFO" in job.stdout + job.stderr  # NCCL carried DDP's broadcast and gradient all-reduces
    train(tmp_path, *data, "hydra.run.dir=plain")
    assert batch_losses(tmp_path / "job") == pytest.approx(batch_losses(tmp_path / "plain"), abs=1e-5)
    assert len(batch_losses(tmp_path / "job")) == 6
