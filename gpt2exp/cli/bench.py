"""``python -m gpt2exp.bench``: measure this machine's matmul peak, training throughput and MFU of
gpt2exp beside Hugging Face transformers, generation speed, the token cache and peak memory;
print them as a table (and write ``bench.json`` in the run folder)."""

import json
import logging
import resource
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gpt2exp.cli import entrypoint as cli
from gpt2exp.cli.table import format_table
from gpt2exp.config import BenchConfig
from gpt2exp.devices import Precision, bf16_supported, resolve_device, resolve_precision
from gpt2exp.errors import UserError
from gpt2exp.runs.layout import RunLayout
from gpt2exp.tokenizer import EOT_TOKEN

log = logging.getLogger("gpt2exp.bench")

Row = tuple[str, str, float, str]


def bench(cfg: BenchConfig) -> list[Row]:
    """Run the configured sections; returns the table's rows (section, measure, value, unit)."""
    import torch
    import transformers

    from gpt2exp.modeling.model import GPTModel

    settings, sections = cfg.bench, set(cfg.bench.sections)
    transformers.logging.set_verbosity_error()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device, key="bench.device")
    precision = resolve_precision(settings.precision, device, key="bench.precision")
    torch.manual_seed(cfg.seed)
    model = GPTModel(cfg.model, activation_checkpointing=settings.activation_checkpointing).to(device)
    m = model.cfg
    batches = []  # only the sections that run
    if "train" in sections:
        batches.append(f"train batch {settings.batch_size}" + (", compiled" if settings.compile else "")
                       + (", activation checkpointing" if settings.activation_checkpointing else ""))
    if "generate" in sections:
        batches.append(f"generate batch 1 and {settings.num_samples}")
    log.info(
        "model: %d layers, %d wide, %d heads, context %d, %s parameters | %s%s (%d threads) | %s",
        m.n_layers, m.emb_dim, m.n_heads, m.context_length, f"{model.num_parameters():,}",
        "".join(f"{part} | " for part in batches), device, torch.get_num_threads(), precision.name,
    )

    rows: list[Row] = []
    peaks = {}
    if "peak" in sections:
        rows += _peak_rows(device)
        peaks = _mfu_peaks(device, rows)
    if sections & {"peak", "generate"}:
        rows += _bandwidth_rows(device)
    if "train" in sections:
        rows += _train_rows(cfg, model, device, precision, peaks)
    if "generate" in sections:
        bandwidth = next(value * 1e9 for _, measure, value, _ in rows if measure == "memory read")
        rows += _generate_rows(cfg, model, precision, bandwidth) + _layout_rows(model, precision, cfg.inference)
    if "data" in sections:
        rows += _data_rows(settings.text_path) + _corpus_rows(settings.corpus_mb)
    if "tasks" in sections:
        from gpt2exp.benchmarks.tasks import task_rows

        rows += task_rows(model, settings.tasks_questions, settings.batch_size)
    if "startup" in sections:
        from gpt2exp.benchmarks.startup import startup_rows

        rows += startup_rows(settings.startup_runs)
    rows += _memory_rows(device)
    return rows


def _peak_rows(device) -> list[Row]:
    import torch

    from gpt2exp.benchmarks.flops import matmul_flops

    rows = [("peak", "matmul fp32", matmul_flops(device, torch.float32) / 1e9, "GFLOP/s")]
    if bf16_supported(device):
        rows.append(("peak", "matmul bf16", matmul_flops(device, torch.bfloat16) / 1e9, "GFLOP/s"))
    if device.type == "cuda":
        rows.append(("peak", "matmul fp16", matmul_flops(device, torch.float16) / 1e9, "GFLOP/s"))
    return rows


def _bandwidth_rows(device) -> list[Row]:
    from gpt2exp.benchmarks.bandwidth import read_bandwidth

    return [("peak", "memory read", read_bandwidth(device) / 1e9, "GB/s")]


def _mfu_peaks(device, peak_rows: list[Row]) -> dict[str, tuple[float, str]]:
    """Per precision, the FLOP/s that MFU is measured against and its name: the GPU's rated
    peak where known, else the measured one."""
    from gpt2exp.modeling.flops import rated_peak

    measured = {measure.split()[-1]: value * 1e9 for _, measure, value, unit in peak_rows if unit == "GFLOP/s"}
    peaks = {name: (flops, f"measured {name} peak") for name, flops in measured.items()}
    for name in measured:
        rated = rated_peak(device, name)
        if rated is not None:
            peaks[name] = (rated, f"rated {name} peak")
    return peaks


def _train_rows(cfg: BenchConfig, model, device, precision, peaks: dict[str, tuple[float, str]]) -> list[Row]:
    """gpt2exp and transformers (and, when the run is fp32 and bf16 runs natively, gpt2exp under
    bf16 autocast) train in turn on the same batch from the same weights. Each one's first step
    (compile included) is timed on its own; on CUDA so is its peak memory in training: its
    weights, gradients and optimizer state plus what a step allocates on top."""
    import copy

    import torch

    from gpt2exp.benchmarks.timing import time_first_call, time_interleaved
    from gpt2exp.benchmarks.training import train_step
    from gpt2exp.benchmarks.transformers_baseline import to_hf
    from gpt2exp.modeling.flops import train_flops_per_token
    from gpt2exp.training.optimizers import make_optimizer

    settings = cfg.bench
    context_length = model.cfg.context_length
    generator = torch.Generator().manual_seed(cfg.seed)
    windows = torch.randint(0, model.cfg.vocab_size, (settings.batch_size, context_length + 1), generator=generator)
    inputs, targets = windows[:, :-1].to(device), windows[:, 1:].to(device)
    compiled = torch.compile if settings.compile else lambda module: module
    runs = {}  # name: (precision, module, optimizer, step)

    def add(name, module, loss_fn, step_precision):
        optimizer = make_optimizer(module, cfg.optimizer)
        runs[name] = (step_precision, module, optimizer, train_step(loss_fn, module, optimizer, step_precision))

    ours = compiled(model)
    add("gpt2exp", model, lambda: ours(inputs, targets=targets), precision)
    if settings.transformers:
        hf_model = to_hf(model)
        if settings.activation_checkpointing:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        theirs = compiled(hf_model)
        add("transformers", hf_model, lambda: theirs(input_ids=inputs, labels=inputs).loss, precision)
    if precision.name == "fp32" and bf16_supported(device):
        bf16, model_copy = Precision("bf16", device.type), copy.deepcopy(model)
        ours_bf16 = compiled(model_copy)
        add("gpt2exp bf16 autocast", model_copy, lambda: ours_bf16(inputs, targets=targets), bf16)
    first_step = {name: time_first_call(run[3], device) for name, run in runs.items()}
    seconds = time_interleaved({name: run[3] for name, run in runs.items()},
                               repeats=settings.steps, warmup=settings.warmup, device=device)
    tokens_per_s = {name: inputs.numel() / value for name, value in seconds.items()}
    rows: list[Row] = []
    for name, value in tokens_per_s.items():
        rows.append(("train", name, value, "tokens/s"))
        peak = peaks.get(runs[name][0].name)
        if peak is not None:
            rows.append(("train", f"{name} MFU", value * train_flops_per_token(model, context_length) / peak[0],
                         f"of {peak[1]}"))
    if "transformers" in tokens_per_s:
        rows.append(("train", "gpt2exp / transformers", tokens_per_s["gpt2exp"] / tokens_per_s["transformers"], "x"))
    if "gpt2exp bf16 autocast" in tokens_per_s:
        rows.append(("train", "gpt2exp bf16 / fp32", tokens_per_s["gpt2exp bf16 autocast"] / tokens_per_s["gpt2exp"],
                     "x"))
    rows += [("train", f"{name} first step", value, "s") for name, value in first_step.items()]
    if device.type == "cuda":
        rows += [("train", f"{name} peak CUDA memory", _training_peak(*run[1:]) / 2**20, "MiB")
                 for name, run in runs.items()]
    return rows


def _training_peak(module, optimizer, step) -> int:
    """Bytes a training step of ``module`` peaks at: its own resident tensors (weights,
    gradients, optimizer state) plus the most a step allocates on top of what is resident."""
    import torch

    resident = sum(t.numel() * t.element_size() for t in (
        *module.parameters(), *(p.grad for p in module.parameters() if p.grad is not None),
        *(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return resident + torch.cuda.max_memory_allocated() - before


def _generate_rows(cfg: BenchConfig, model, precision, bandwidth: float) -> list[Row]:
    """Tokens/s of each way to generate; MBU of KV-cached greedy decoding (bytes of weights and
    KV cache read per token x tokens/s / the measured memory read bandwidth)."""
    from gpt2exp.benchmarks.bandwidth import decode_mbu
    from gpt2exp.benchmarks.generation import measure_generation

    num_samples = cfg.bench.num_samples
    result = measure_generation(model, new_tokens=cfg.bench.new_tokens, num_samples=num_samples, precision=precision,
                                settings=cfg.inference)
    labels = {"cached": "gpt2exp, KV cache", "cached_no_graph": "gpt2exp, KV cache without CUDA graph",
              "recompute": "gpt2exp, no cache (recompute)", "hf": "transformers generate",
              "sampled_batch": f"gpt2exp, {num_samples} samples at once",
              "hf_sampled_batch": f"transformers, {num_samples} samples at once"}
    rows = [("generate", label, result[f"{name}_tokens_per_sec"], "tokens/s")
            for name, label in labels.items() if f"{name}_tokens_per_sec" in result]
    weight_bytes = 2 if cfg.inference.weights == "bf16" and model.tok_emb.weight.device.type == "cpu" else 4
    mbu = decode_mbu(model, result["cached_tokens_per_sec"], bandwidth, prompt_tokens=int(result["prompt_tokens"]),
                     new_tokens=cfg.bench.new_tokens, weight_bytes=weight_bytes)
    rows.append(("generate", "gpt2exp, KV cache MBU", mbu, "of measured memory read"))
    rows.append(("generate", "KV cache / recompute", result["cached_vs_recompute"], "x"))
    if "cached_vs_hf" in result:
        rows.append(("generate", "KV cache / transformers", result["cached_vs_hf"], "x"))
        rows.append(("generate", "same greedy tokens as transformers", float(result["hf_same_tokens"]), "1 = yes"))
    return rows


def _layout_rows(model, precision, settings) -> list[Row]:
    """On a CPU, the inference layouts: one step's Linear layers in each candidate layout, for
    decoding (and its weights' read in GB/s) and for scoring, the fastest named; tokens/s scoring
    full windows in PyTorch's layout and in the chosen one."""
    from gpt2exp.benchmarks.layouts import layout_times, scoring_speed, weight_read_gb_per_s

    if model.tok_emb.weight.device.type != "cpu":
        return []
    rows: list[Row] = []
    for use, seconds in layout_times(model).items():
        for name, value in seconds.items():
            rows.append(("generate", f"{use} step, {name} layout", value * 1e3, "ms"))
            if use.startswith("decode"):
                gb_per_s = weight_read_gb_per_s(model, value, weight_bytes=2 if use.endswith("bf16") else 4)
                rows.append(("generate", f"{use} step, {name} layout, weight read", gb_per_s, "GB/s"))
        best = min(seconds, key=seconds.__getitem__)
        rows.append(("generate", f"{use} step, fastest: {best}", seconds[best] * 1e3, "ms"))
    speed = scoring_speed(model, precision, settings)
    rows += [("generate", f"score full windows, {name}", value, "tokens/s") for name, value in speed.items()]
    rows.append(("generate", "inference layout / PyTorch layout", speed["inference layout"] / speed["PyTorch layout"],
                 "x"))
    return rows


def _data_rows(text_path: str | None) -> list[Row]:
    from gpt2exp.benchmarks.corpus import measure_token_cache
    from gpt2exp.data import pydocs_documents

    if text_path is None:
        name, text = "pydocs", EOT_TOKEN.join(pydocs_documents())
    else:
        try:
            name, text = Path(text_path).name, Path(text_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"bench.text_path={text_path!r} cannot be read as UTF-8 text ({err})") from None
    result = measure_token_cache(text)
    corpus = f"{name}, {result['tokens']:,} tokens"
    return [
        ("data", f"tokenize + cache ({corpus})", result["tokenize_s"], "s"),
        ("data", "load from cache", result["reload_s"], "s"),
    ]


def _corpus_rows(megabytes: float) -> list[Row]:
    """A generated corpus into a token file: data=hf's way beside `datasets.map`, each in a process
    of its own (throughput, and peak memory: flat in the corpus's size for data=hf)."""
    from gpt2exp.benchmarks.corpus import measure_large_corpus

    results = measure_large_corpus(megabytes)
    rows: list[Row] = []
    for way, result in results.items():
        rows += [("data", f"{way} tokenize {megabytes:g} MB", result["mb_per_s"], "MB/s"),
                 ("data", f"{way} peak RSS", result["peak_rss_mb"], "MB")]
    rows.append(("data", "data=hf / datasets.map", results["gpt2exp"]["mb_per_s"] / results["datasets.map"]["mb_per_s"],
                 "x"))
    return rows


def _memory_rows(device) -> list[Row]:
    import torch

    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rows = [("memory", "peak process RSS", max_rss / (2**20 if sys.platform == "darwin" else 2**10), "MiB")]
    if device.type == "cuda":
        rows.append(("memory", "peak CUDA allocated", torch.cuda.max_memory_allocated(device) / 2**20, "MiB"))
    return rows


def bench_table(rows: list[Row]) -> str:
    """The rows as aligned columns under a header, the values aligned right."""
    cells = [[section, measure, _format_value(value), unit] for section, measure, value, unit in rows]
    return format_table(["section", "measure", "value", "unit"], cells, right=frozenset({2}))


def _format_value(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def _run(composed: DictConfig) -> None:
    rows = bench(cli.typed(composed, BenchConfig))
    log.info("%s", bench_table(rows))
    records = [dict(zip(("section", "measure", "value", "unit"), row)) for row in rows]
    (Path(HydraConfig.get().runtime.output_dir) / RunLayout.BENCH).write_text(json.dumps(records, indent=1) + "\n")


main = cli.hydra_command("bench", _run)


if __name__ == "__main__":
    main()
