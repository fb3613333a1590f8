"""``python -m gpt2exp.bench``: the table's shape (never its speeds) and its config checks."""
import json
import re

import torch
from helpers import TINY_BENCH, run_folders

from gpt2exp.devices import bf16_supported
from gpt2exp.modeling.inference_layout import candidates, packing_works

BF16 = bf16_supported(torch.device("cpu"))
USES = ("decode", "score", *["decode bf16"] * packing_works(torch.bfloat16))


def layout_measures(use: str) -> list[tuple[str, str]]:
    """The rows of one use's layout timings: each candidate's time (and for decoding its weight
    read), then the fastest (its name after a colon, dropped here)."""
    rows = []
    for name in candidates("bf16" if use.endswith("bf16") else "fp32"):
        rows.append(("generate", f"{use} step, {name} layout"))
        rows += [("generate", f"{use} step, {name} layout, weight read")] * use.startswith("decode")
    return [*rows, ("generate", f"{use} step, fastest")]


def test_bench_prints_every_section(run_module, text_file, tmp_path):
    result = run_module("gpt2exp.bench", *TINY_BENCH, f"bench.text_path={text_file}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model: 1 layers, 32 wide, 2 heads, context 32,") and "| fp32" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.split() == ["section", "measure", "value", "unit"])
    assert all("inference layout for " in line for line in lines[1:header])  # the layout choices, logged
    table = [re.split(r"\s{2,}", line.strip()) for line in lines[header + 1 :]]
    measures = [(row[0], re.sub(r", fastest: \S+$", ", fastest", row[1])) for row in table]
    assert re.fullmatch(rf"tokenize \+ cache \({text_file.name}, [\d,]+ tokens\)", measures[-8][1])
    assert measures[:-8] + measures[-7:] == [
        ("peak", "matmul fp32"), *[("peak", "matmul bf16")] * BF16, ("peak", "memory read"),
        ("train", "gpt2exp"), ("train", "gpt2exp MFU"), ("train", "transformers"), ("train", "transformers MFU"),
        *[("train", "gpt2exp bf16 autocast"), ("train", "gpt2exp bf16 autocast MFU")] * BF16,
        ("train", "gpt2exp / transformers"), *[("train", "gpt2exp bf16 / fp32")] * BF16,
        ("train", "gpt2exp first step"), ("train", "transformers first step"),
        *[("train", "gpt2exp bf16 autocast first step")] * BF16,
        ("generate", "gpt2exp, KV cache"), ("generate", "gpt2exp, no cache (recompute)"),
        ("generate", "transformers generate"), ("generate", "gpt2exp, 8 samples at once"),
        ("generate", "transformers, 8 samples at once"), ("generate", "gpt2exp, KV cache MBU"),
        ("generate", "KV cache / recompute"),
        ("generate", "KV cache / transformers"), ("generate", "same greedy tokens as transformers"),
        *[row for use in USES for row in layout_measures(use)],
        ("generate", "score full windows, PyTorch layout"), ("generate", "score full windows, inference layout"),
        ("generate", "inference layout / PyTorch layout"),
        ("data", "load from cache"),
        ("data", "gpt2exp tokenize 0.5 MB"), ("data", "gpt2exp peak RSS"), ("data", "datasets.map tokenize 0.5 MB"),
        ("data", "datasets.map peak RSS"), ("data", "data=hf / datasets.map"),
        ("memory", "peak process RSS"),
    ]
    assert all(float(row[2].replace(",", "")) > 0 for row in table)
    [run_dir] = run_folders(tmp_path)
    records = json.loads((run_dir / "bench.json").read_text())
    assert [(r["section"], r["measure"]) for r in records] == [(row[0], row[1]) for row in table]


def test_bench_runs_only_the_chosen_sections(run_module, tmp_path):
    result = run_module("gpt2exp.bench", *TINY_BENCH, "bench.sections=[train]")
    assert result.returncode == 0, result.stderr
    table = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()[2:]]
    assert [row[0] for row in table] == ["train"] * (5 + 3 * BF16) + ["memory"]
    assert not any("MFU" in row[1] for row in table)  # MFU needs the peak section


def test_bench_can_train_gpt2exp_alone_with_activation_checkpointing(run_module):
    result = run_module("gpt2exp.bench", *TINY_BENCH, "bench.sections=[train]", "bench.transformers=false",
                        "bench.activation_checkpointing=true", "bench.batch_size=3")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    # The batch of each section that runs, and none of a section that does not (generate).
    assert re.search(r"parameters \| train batch 3, activation checkpointing \| [\w:]+ \(\d+ threads\)", header), header
    measures = [re.split(r"\s{2,}", line.strip())[1] for line in result.stdout.splitlines()[2:]]
    assert "gpt2exp" in measures and not any("transformers" in m for m in measures)
