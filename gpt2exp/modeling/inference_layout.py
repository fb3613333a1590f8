"""Weight layouts for a model that only infers (generates or scores): same values, faster.

At batch 1 a decoding step is a matrix-vector product per Linear layer, bound by how fast the
weights stream from memory, and which layout streams fastest depends on the CPU: oneDNN's
blocked layout (``torch.ops.mkldnn``, as inductor's CPU freezing packs weights) beats PyTorch's
own on an AMD EPYC, where PyTorch's MKL runs its AVX2 code, and loses to a transposed weight on
an Intel Xeon with AMX. So ``layout="auto"`` times one step of each candidate on the model's own
shapes at the first inference and uses the fastest (PyTorch's own where the fastest leads it by
no more than the measurement's noise). A measurement taken on a quiet machine is cached per CPU,
PyTorch version, thread count, use (one-token decoding, or scoring full windows) and shapes in
``$GPT2EXP_CACHE_DIR/inference_layouts.json`` (default ``~/.cache/gpt2exp``): a later run pays
nothing. One taken while other processes load the CPU, which reorders the layouts, serves its
own run only, up to ``BUSY_MEASUREMENTS`` of them: then the layout that beat PyTorch's own in
each of them and was the fastest over all is kept, else PyTorch's own, which never loses to itself.
``python -m gpt2exp.bench bench.sections=[generate]`` prints each candidate's time.
"""

import functools
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gpt2exp import cache
from gpt2exp.atomic import write_json_atomic
from gpt2exp.config import InferenceConfig
from gpt2exp.devices import FP32, Precision, bf16_supported
from gpt2exp.errors import UserError
from gpt2exp.modeling.model import GPTModel

log = logging.getLogger(__name__)

# The layouts a run can force (``inference.layout``); "auto" measures them. "packed-1" is
# oneDNN's layout blocked for one input row (decoding's shape), "packed" for PACKED_FOR_ROWS.
LAYOUTS = ("linear", "transposed", "packed")
CANDIDATES = ("linear", "transposed", "packed", "packed-1")
USES = ("decode", "score")
PACKED_FOR_ROWS = 256
# The block weights one timed decoding step reads (the output head besides): far beyond a CPU's
# last-level cache, as a whole model's are, without laying out every block of a large model.
TIMED_BLOCK_BYTES = 256 * 2**20
SCORED_ROWS = 128  # rows of a timed scoring step: compute-bound from here on, as full windows are
CACHE_FILE = "inference_layouts.json"
REPEATS = 7  # rounds of a measurement
MIN_ROUNDS = 3  # rounds of a measurement under load (not kept: it serves its own run only)
# When a measurement is trusted (cached) and when a layout beats PyTorch's own (`decide`).
MAX_CPU_WAIT = 0.05  # of the rounds' thread time spent waiting for a CPU (a quiet machine's hardly wait)
AGREEMENT = 0.1  # a candidate's median round within this fraction of its fastest
MIN_MARGIN = 0.02  # of the reference's time: a smaller lead is not worth a layout
BUSY_MEASUREMENTS = 3  # untrusted measurements before they settle the choice together (`settle`)


class PackedLinear(nn.Module):
    """An inference-only ``nn.Linear`` (no gradient) whose weight oneDNN holds pre-arranged for
    ``packed_for`` input rows, in fp32 or (``dtype=torch.bfloat16``, on CPUs with native bf16)
    in bf16: inputs are cast to it and outputs back. ``rows`` keeps the first output rows only
    (the output head's vocabulary, without padding)."""

    def __init__(self, linear: nn.Linear, rows: int | None = None, *, packed_for: int = PACKED_FOR_ROWS,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        weight = linear.weight.detach()[:rows].to(dtype).contiguous()
        self.out_features = weight.size(0)
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, packed_for)
        self.bias = None if linear.bias is None else linear.bias.detach()[:rows].to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.mkldnn._linear_pointwise(x.to(self.packed_weight.dtype), self.packed_weight, self.bias,
                                                 "none", [], "")
        return out.to(x.dtype)


def to_inference_layout(model: GPTModel, precision: Precision = FP32, *, use: str = "decode",
                        settings: InferenceConfig | None = None) -> GPTModel:
    """Lay ``model``'s weights out for inference in ``precision``, in place, and return it; for a
    model that only infers from now on (it can no longer train, nor move to another device).

    On the CPU, for fp32 inference of fp32 weights, each Linear takes ``settings.layout``: ``linear``
    (PyTorch's own, unchanged), ``transposed`` (the weight stored transposed in memory),
    ``packed`` (a ``PackedLinear``; the tied output head a packed copy of the vocabulary rows,
    the embedding keeps its own), or ``auto``: the fastest for ``use`` (``decode``: one-token
    steps, ``score``: full windows), measured once (`choose_layout`). ``settings.weights=bf16`` packs
    bf16 copies of the weights (half the bytes each decoding step reads; logits round off).
    Under autocast, or where this build lacks oneDNN's packed Linear, the weights are stored
    transposed, which one-token matmuls read faster too. Other devices keep the model as it is."""
    weight = model.tok_emb.weight
    if weight.device.type != "cpu":
        return model
    settings = settings or InferenceConfig()
    check_settings(settings)
    layout, weights = str(settings.layout), str(settings.weights)
    fp32 = precision.name == "fp32" and weight.dtype == torch.float32
    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    if not fp32:
        layout = "transposed"
    elif layout == "auto":
        layout = choose_layout(model, use, weights)
    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    rows = model.cfg.vocab_size if child is model.out_head else None
                    _lay_out(parent, name, child, rows, layout, dtype)
    return model


def check_settings(settings: InferenceConfig) -> None:
    """Raise UserError naming the `inference.*` key that this CPU and PyTorch build cannot take."""
    layout, weights = str(settings.layout), str(settings.weights)
    if weights == "bf16" and layout not in ("auto", "packed"):
        raise UserError(f"inference.layout={layout} is not allowed with inference.weights=bf16: bf16 weights are "
                        "packed (use auto or packed)")
    if weights == "bf16" and not packing_works(torch.bfloat16):
        raise UserError("inference.weights=bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX) and oneDNN in "
                        "this PyTorch build; use inference.weights=fp32")
    if layout == "packed" and not packing_works():
        raise UserError("inference.layout=packed: this PyTorch build lacks oneDNN's packed Linear; use auto")


def _lay_out(parent: nn.Module, name: str, linear: nn.Linear, rows: int | None, layout: str,
             dtype: torch.dtype) -> None:
    if layout.startswith("packed"):
        packed_for = 1 if layout == "packed-1" else PACKED_FOR_ROWS
        setattr(parent, name, PackedLinear(linear, rows, packed_for=packed_for, dtype=dtype))
    elif layout == "transposed":
        linear.weight.data = linear.weight.data.t().contiguous().t()


def candidates(weights: str = "fp32") -> tuple[str, ...]:
    """The layouts `choose_layout` times on this PyTorch build (bf16 weights: packed only)."""
    if weights == "bf16":
        return ("packed", "packed-1")
    return CANDIDATES if packing_works() else ("linear", "transposed")


def choose_layout(model: GPTModel, use: str, weights: str = "fp32") -> str:
    """The fastest candidate layout for ``use`` of ``model``'s shapes on this machine, or PyTorch's
    own where the fastest is within the measurement's noise of it: read from the cache file when
    this CPU, PyTorch version, thread count, use and shapes were measured before, else measured
    (`measure_layouts`, `decide`). A trustworthy measurement's choice is final; a busy machine's
    serves its run, and the next run measures again, up to ``BUSY_MEASUREMENTS`` busy ones, which
    then settle the choice together (`settle`): a machine never quiet pays no more measurements.
    A cache that cannot be read is measured again and rewritten; one that cannot be written only
    costs the next run a measurement."""
    key = cache_key(model, use, weights)
    path = cache_path()
    cached = _read_cache(path)
    entry = cached.get(key)
    entry = entry if isinstance(entry, dict) else {}
    # Measured again: an entry without "noise_ms" (kept before measurements were checked) or with
    # "busy_measurements" (a busy machine's last choice, kept before busy ones were settled together).
    usable = entry.get("layout") in candidates(weights) and "noise_ms" in entry and "busy_measurements" not in entry
    busy = entry.get("busy_ms", []) if usable else []
    busy = busy if isinstance(busy, list) and all(_times_of(weights, times) for times in busy) else []
    if usable and (not busy or len(busy) >= BUSY_MEASUREMENTS):
        return entry["layout"]
    measurement = measure_layouts(model, use, weights)
    choice = decide(measurement)
    times_ms = {name: round(value * 1e3, 4) for name, value in measurement.fastest.items()}
    busy = [] if choice.kept else [*busy, times_ms]
    layout, outcome = choice.layout, f"kept in {path}"
    if 0 < len(busy) < BUSY_MEASUREMENTS:
        outcome = f"not kept, the next run measures again (busy measurement {len(busy)} of {BUSY_MEASUREMENTS})"
    elif busy:
        layout, why = settle(busy)
        outcome = f"{layout} kept in {path} after {len(busy)} measurements on a busy machine: {why}"
    cached[key] = {"layout": layout, "ms": times_ms,
                   "noise_ms": {name: round(measurement.noise(name) * 1e3, 4) for name in measurement.rounds},
                   **({"busy_ms": busy} if busy else {})}
    times = ", ".join(f"{name} {value * 1e3:.3g} ms" for name, value in measurement.fastest.items())
    try:
        write_json_atomic(path, cached)
    except OSError as err:
        log.warning("inference layout: cannot keep the choice in %s (%s)", path, err.strerror or err)
        return layout
    log.info("inference layout for %s: %s (%s; %s); %s", use, choice.layout, times, choice.reason, outcome)
    return layout


def settle(busy: list[dict[str, float]]) -> tuple[str, str]:
    """The layout to keep from measurements on a busy machine (each candidate's milliseconds,
    the reference first), and why: of the layouts that beat the reference by ``MIN_MARGIN`` in
    every one of them, the fastest over them all; else the reference, which never loses to itself.
    Load reorders the layouts from one measurement to the next, so no single one decides."""
    reference = next(iter(busy[0]))
    totals = {name: sum(times[name] for times in busy) for name in busy[0]}
    beat = [name for name in totals if name != reference
            and all(times[name] < (1 - MIN_MARGIN) * times[reference] for times in busy)]
    if not beat:
        return reference, f"no layout beat {reference} in every one (force inference.layout to change it)"
    best = min(beat, key=totals.__getitem__)
    return best, f"it beat {reference} in every one and was the fastest over all (force inference.layout to change it)"


def _times_of(weights: str, times: object) -> bool:
    """Whether ``times`` is a kept measurement's milliseconds for every candidate, in their order."""
    return (isinstance(times, dict) and list(times) == list(candidates(weights))
            and all(isinstance(value, (int, float)) for value in times.values()))


@dataclass(frozen=True)
class Measurement:
    """Each candidate's seconds per step, one per round, and the share of the rounds' thread time
    that this process's threads waited for a CPU another process held (None where the OS does
    not say)."""

    rounds: dict[str, list[float]]
    cpu_wait: float | None

    @property
    def fastest(self) -> dict[str, float]:
        """Each candidate's fastest round: another process only ever adds time."""
        return {name: min(values) for name, values in self.rounds.items()}

    def noise(self, name: str) -> float:
        """How far ``name``'s median round lies above its fastest: what one measurement cannot resolve."""
        return statistics.median(self.rounds[name]) - min(self.rounds[name])


@dataclass(frozen=True)
class Choice:
    """What `decide` made of a measurement."""

    layout: str
    kept: bool  # whether the measurement is trustworthy enough to cache
    reason: str  # why, in a few words, for the log line


def decide(measurement: Measurement) -> Choice:
    """The layout to use and whether to keep it, from one measurement.

    The fastest candidate beats PyTorch's own (the first candidate: ``linear``; ``packed`` for
    bf16 weights) only by a margin larger than either one's noise and than ``MIN_MARGIN`` of the
    reference's time; else the reference is used, which never loses to itself. The choice is kept
    only when the machine was quiet: this process hardly waited for a CPU (``MAX_CPU_WAIT``) and
    every candidate's rounds agree (noise within ``AGREEMENT`` of its fastest). A steady load
    makes the rounds agree but reorders the layouts (oneDNN's packed ones slow down most), hence
    the CPU wait; bursts show as noise."""
    fastest = measurement.fastest
    reference, winner = next(iter(fastest)), min(fastest, key=fastest.__getitem__)
    margin = fastest[reference] - fastest[winner]
    noise = max(measurement.noise(winner), measurement.noise(reference), MIN_MARGIN * fastest[reference])
    if winner != reference and margin <= noise:
        layout, reason = reference, f"{winner}'s lead of {margin * 1e3:.3g} ms is within the noise"
    else:
        layout, reason = winner, f"{margin * 1e3:.3g} ms ahead of {reference}" if winner != reference else "the fastest"
    spread = max(measurement.noise(name) / fastest[name] for name in fastest)
    if measurement.cpu_wait is not None and measurement.cpu_wait > MAX_CPU_WAIT:
        return Choice(layout, False, f"{reason}; this process's threads waited for a CPU {measurement.cpu_wait:.0%} "
                                     "of the time (another process was using it)")
    if spread > AGREEMENT:
        return Choice(layout, False, f"{reason}; the rounds disagree by up to {spread:.0%}")
    return Choice(layout, True, f"{reason}; the rounds agree within {spread:.0%}")


def cache_path() -> Path:
    return cache.folder() / CACHE_FILE


def _read_cache(path: Path) -> dict:
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable or corrupt: measured again
        return {}
    return cached if isinstance(cached, dict) else {}


def cache_key(model: GPTModel, use: str, weights: str) -> str:
    """What a layout choice holds for: this CPU, PyTorch version and thread count, the use,
    the weights' precision and the shapes of the model's Linear layers."""
    shapes = sorted({f"{linear.in_features}x{linear.out_features}" for linear in _linears(model)[1]})
    return (f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {use} | {weights} | "
            f"{','.join(shapes)} | head {model.cfg.emb_dim}x{model.cfg.vocab_size}")


def cpu_name() -> str:
    """The CPU, as its kernels' speed depends on it: the model name, family, model and stepping
    (Linux's /proc/cpuinfo, else what the platform reports), and the vector instructions that
    PyTorch's kernels use on it, with native bf16 and AMX. A virtual machine may report only a
    generic name ("AMD EPYC" for an AVX2 Zen 3 and an AVX512-BF16 Zen 4 alike)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if not name.strip():  # the first processor's fields end here
                    break
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    numbers = ", ".join(f"{name} {fields[key]}" for name, key in (("family", "cpu family"), ("model", "model"),
                                                                   ("stepping", "stepping")) if key in fields)
    isa = [torch.backends.cpu.get_cpu_capability()]
    isa += ["BF16"] * torch.cpu._is_avx512_bf16_supported() + ["AMX"] * torch.cpu._is_amx_tile_supported()
    return f"{model} ({numbers + '; ' if numbers else ''}{' '.join(isa)})"


def time_layouts(model: GPTModel, use: str, weights: str = "fp32", *, repeats: int = REPEATS) -> dict[str, float]:
    """Seconds of one inference step's Linear layers in each candidate layout, the fastest of
    ``repeats`` rounds (`measure_layouts`)."""
    return measure_layouts(model, use, weights, repeats=repeats).fastest


def measure_layouts(model: GPTModel, use: str, weights: str = "fp32", *, repeats: int = REPEATS) -> Measurement:
    """One inference step's Linear layers timed in each candidate layout, ``repeats`` rounds of
    the candidates taking turns: for ``decode`` one token, for ``score`` ``SCORED_ROWS`` tokens.
    The step is the output head's (vocabulary rows) plus blocks' Linears scaled to all
    ``n_layers`` blocks: as many blocks as ``TIMED_BLOCK_BYTES`` hold for decoding, one for
    scoring (compute-bound, the cache matters not)."""
    head, blocks = _linears(model)
    per_block = len(blocks) // model.cfg.n_layers
    block_bytes = sum(linear.weight.numel() * linear.weight.element_size() for linear in blocks[:per_block])
    timed_blocks = 1 if use == "score" else max(1, min(model.cfg.n_layers, TIMED_BLOCK_BYTES // max(block_bytes, 1)))
    timed = blocks[: timed_blocks * per_block]
    rows = 1 if use == "decode" else min(SCORED_ROWS, model.cfg.context_length)
    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    inputs = [torch.randn(rows, linear.in_features) for linear in (*timed, head)]
    steps = {}
    with torch.no_grad():
        for layout in candidates(weights):
            layers = [_timed_layer(linear, None, layout, dtype) for linear in timed]
            layers.append(_timed_layer(head, model.cfg.vocab_size, layout, dtype))
            steps[layout] = _step(layers, inputs)
    with torch.inference_mode():
        rounds, cpu_wait = _timed_rounds(steps, repeats=repeats)
    scale = model.cfg.n_layers / timed_blocks
    return Measurement({layout: [blocks_s * scale + head_s for blocks_s, head_s in parts]
                        for layout, parts in rounds.items()}, cpu_wait)


def _timed_layer(linear: nn.Linear, rows: int | None, layout: str, dtype: torch.dtype) -> nn.Module:
    """``linear`` (its first ``rows`` outputs) in ``layout``, the original untouched: a layer
    sharing its weight in PyTorch's layout, else a laid-out copy."""
    layer = nn.utils.skip_init(nn.Linear, linear.in_features, linear.weight[:rows].size(0), bias=linear.bias is not None)
    layer.weight.data = linear.weight.detach()[:rows]
    if linear.bias is not None:
        layer.bias.data = linear.bias.detach()[:rows]
    holder = nn.Module()
    holder.layer = layer
    _lay_out(holder, "layer", layer, None, layout, dtype)
    return holder.get_submodule("layer")


def _step(layers: list[nn.Module], inputs: list[torch.Tensor]) -> Callable[[], tuple[float, float]]:
    """One step over ``layers`` (the head last); returns the blocks' seconds and the head's."""
    def run() -> tuple[float, float]:
        start = time.perf_counter()
        for layer, x in zip(layers[:-1], inputs[:-1]):
            layer(x)
        middle = time.perf_counter()
        layers[-1](inputs[-1])
        return middle - start, time.perf_counter() - middle

    return run


def _timed_rounds(steps: dict[str, Callable[[], tuple[float, float]]], *,
                 repeats: int) -> tuple[dict[str, list[tuple[float, float]]], float | None]:
    """Each step's parts in each of ``repeats`` rounds after one untimed call, the steps taking
    turns in an order reversed every round; and the share of the rounds' thread time (wall time
    by torch's thread count) that this process's threads spent waiting for a CPU. Waiting more
    than ``MAX_CPU_WAIT``, the rounds stop after ``MIN_ROUNDS``: such a measurement is not kept."""
    names = list(steps)
    for name in names:
        steps[name]()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    waited_before, start = _cpu_wait_ns(), time.perf_counter_ns()
    cpu_wait = None
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            times[name].append(steps[name]())
        cpu_wait = _cpu_wait_share(waited_before, start)
        if round_index + 1 >= MIN_ROUNDS and cpu_wait is not None and cpu_wait > MAX_CPU_WAIT:
            break
    return times, cpu_wait


def _cpu_wait_share(waited_before: dict[str, int] | None, start_ns: int) -> float | None:
    """The share of the thread time since ``start_ns`` (wall time by torch's thread count) that
    this process's threads spent waiting for a CPU; None where the OS does not report it."""
    wall, waited_after = time.perf_counter_ns() - start_ns, _cpu_wait_ns()
    if waited_before is None or waited_after is None:
        return None
    waited = sum(waited_after[thread] - waited_before[thread] for thread in waited_before.keys() & waited_after.keys())
    return waited / max(wall * torch.get_num_threads(), 1)


def _cpu_wait_ns() -> dict[str, int] | None:
    """Nanoseconds each thread of this process has waited on a run queue for a CPU (Linux's
    /proc/self/task/*/schedstat); None where the OS does not report it."""
    waits = {}
    try:
        threads = os.listdir("/proc/self/task")
    except OSError:
        return None
    for thread in threads:
        try:
            with open(f"/proc/self/task/{thread}/schedstat", encoding="ascii") as schedstat:
                waits[thread] = int(schedstat.read().split()[1])
        except (OSError, ValueError, IndexError):  # a thread that ended, or no schedstat
            continue
    return waits or None


def _linears(model: GPTModel) -> tuple[nn.Linear, list[nn.Linear]]:
    """The output head and the blocks' Linear layers, in order."""
    blocks = [module for module in model.blocks.modules() if isinstance(module, nn.Linear)]
    return model.out_head, blocks


@functools.cache
def packing_works(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build has oneDNN's packed Linear in ``dtype`` and it computes what
    F.linear does (the ops are internal to PyTorch, so a build may lack or change them); bf16
    also needs a CPU with native bf16 (AVX512-BF16 or AMX), else oneDNN emulates it slowly."""
    if dtype == torch.bfloat16 and not bf16_supported(torch.device("cpu")):
        return False
    try:
        linear = nn.Linear(16, 8)
        x = torch.randn(3, 16)
        with torch.no_grad():
            expected = F.linear(x, linear.weight, linear.bias)
            tolerance = 1e-5 if dtype == torch.float32 else 0.05
            return torch.allclose(PackedLinear(linear, dtype=dtype)(x), expected, atol=tolerance)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
