"""Typed schemas for the Hydra configs, and the range checks that types cannot express.

The dataclasses are registered in Hydra's ConfigStore and sit first in each primary
config's defaults list, so a wrong type or an unknown key fails at compose time. The
``check_*`` functions raise ``UserError`` with one line naming the key and what is allowed.
"""

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

from gpt2exp.devices import PRECISIONS
from gpt2exp.errors import UserError
from gpt2exp.tokenizer import VOCAB_SIZE

SAMPLERS = ("windows", "random")
WEIGHT_INITS = ("gpt2", "torch_default")
DECAY_TARGETS = ("matrices", "all")
MAX_NEW_TOKENS = 65_536
_WANDB_NAME_FORBIDDEN = "/\\#?%:"
BENCH_SECTIONS = ("peak", "train", "generate", "data")


@dataclass
class ModelConfig:
    vocab_size: int = VOCAB_SIZE
    context_length: int = MISSING
    emb_dim: int = MISSING
    n_heads: int = MISSING
    n_layers: int = MISSING
    drop_rate: float = 0.0
    qkv_bias: bool = False
    pad_vocab_to: int = 1
    tie_embeddings: bool = True
    weight_init: str = "gpt2"
    init: Optional[str] = None  # a Hugging Face GPT-2 folder, or gpt2 / gpt2-medium / ... from its cache


@dataclass
class DataConfig:
    source: str = "pydocs"
    path: Optional[str] = None
    name: str = "wikitext-2-raw-v1"
    local_dir: Optional[str] = None
    train_ratio: float = 0.9
    batch_size: int = 8
    stride: int = II("model.context_length")
    sampler: str = "windows"
    shuffle: bool = True
    drop_last: bool = True
    num_workers: int = 0
    cache_dir: str = "${oc.env:GPT2EXP_CACHE_DIR,'~/.cache/gpt2exp'}"


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 4e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay_on: str = "matrices"


@dataclass
class DecodingConfig:
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    eos_id: Optional[int] = None
    max_new_tokens: int = 50
    num_samples: int = 1
    seed: int = 123


@dataclass
class LoggerConfig:
    backend: str = "wandb"
    mode: str = "auto"
    project: str = "gpt2exp"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    name: Optional[str] = None
    log_model: str = "false"


@dataclass
class TrainerConfig:
    epochs: int = 1
    max_steps: Optional[int] = None
    eval_freq: int = 50
    eval_iter: int = 5
    sample_freq: Optional[int] = None
    start_context: str = "Every effort moves you"
    grad_accum: int = 1
    grad_clip: Optional[float] = 1.0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    progress: bool = True
    checkpoint_freq: Optional[int] = None
    checkpoint_minutes: Optional[float] = 30.0
    keep_last: int = 1
    keep_best: bool = True
    save_optimizer: bool = True
    test: Optional[bool] = None
    resume: Optional[str] = None
    skip_nonfinite: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 123


@dataclass
class GenerateConfig:
    ckpt: str = MISSING
    prompt: str = "Every effort moves you"
    device: str = "auto"
    plot_temperatures: list[float] = field(default_factory=lambda: [1.0, 0.3, 1.5])
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class BenchSettings:
    batch_size: int = 8
    steps: int = 10
    warmup: int = 2
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    activation_checkpointing: bool = False
    transformers: bool = True
    threads: Optional[int] = None
    new_tokens: int = 32
    num_samples: int = 8
    text_path: Optional[str] = None
    sections: list[str] = field(default_factory=lambda: list(BENCH_SECTIONS))


@dataclass
class BenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    bench: BenchSettings = field(default_factory=BenchSettings)
    seed: int = 123


@dataclass
class EvalModel:
    init: Optional[str] = None


@dataclass
class EvalSettings:
    split: str = "test"
    stride: int = 512
    batch_size: int = 4
    device: str = "auto"
    precision: str = "fp32"


@dataclass
class EvalConfig:
    ckpt: Optional[str] = None
    model: EvalModel = field(default_factory=EvalModel)
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)
    ConfigStore.instance().store(name="bench_schema", node=BenchConfig)
    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


def without_keys(resolved: dict, keys: Iterable[str]) -> dict:
    """A plain copy of a resolved config without the dotted `keys` (whole sections or leaves)."""
    pruned = json.loads(json.dumps(resolved, default=str))
    for key in keys:
        *parents, leaf = key.split(".")
        section = pruned
        for parent in parents:
            section = section.get(parent, {})
        section.pop(leaf, None)
    return pruned


def config_hash(resolved: dict, ignored: Iterable[str] = ()) -> str:
    """sha256 (hex) of a resolved config without the `ignored` dotted keys."""
    return hashlib.sha256(json.dumps(without_keys(resolved, ignored), sort_keys=True).encode()).hexdigest()


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is not allowed: {allowed}")


def _positive(section: Any, prefix: str, *keys: str) -> None:
    for key in keys:
        value = section[key]
        _require(value >= 1, f"{prefix}.{key}", value, "must be an integer >= 1")


def check_data(data: Any) -> None:
    _positive(data, "data", "batch_size", "stride")
    _require(0 < data.train_ratio < 1, "data.train_ratio", data.train_ratio, "must be between 0 and 1 (exclusive)")
    _require(data.num_workers >= 0, "data.num_workers", data.num_workers, "must be >= 0")
    _require(data.sampler in SAMPLERS, "data.sampler", data.sampler, "one of " + ", ".join(SAMPLERS))


def check_model(model: Any) -> None:
    _positive(model, "model", "context_length", "emb_dim", "n_heads", "n_layers")
    _require(
        model.emb_dim % model.n_heads == 0,
        "model.n_heads",
        model.n_heads,
        f"must divide model.emb_dim={model.emb_dim}",
    )
    _require(model.vocab_size >= VOCAB_SIZE, "model.vocab_size", model.vocab_size, f"must be >= {VOCAB_SIZE}")
    pad = model.get("pad_vocab_to", 1)  # checkpoints from before vocabulary padding lack the key
    _require(1 <= pad <= 4096, "model.pad_vocab_to", pad, "must be in [1, 4096]")
    _require(0.0 <= model.drop_rate < 1.0, "model.drop_rate", model.drop_rate, "must be in [0, 1)")
    init = model.get("weight_init", "gpt2")  # checkpoints from before the option lack it
    _require(init in WEIGHT_INITS, "model.weight_init", init, "one of " + ", ".join(WEIGHT_INITS))


def model_parameters(model: Any) -> int:
    """The parameter count of `GPTModel` with these settings (a tied embedding counted once)."""
    emb, bias = model.emb_dim, 3 * model.emb_dim if model.qkv_bias else 0
    per_layer = 12 * emb * emb + 10 * emb + bias
    pad = model.get("pad_vocab_to", 1)
    padded_vocab = -(-model.vocab_size // pad) * pad
    heads = 1 if model.get("tie_embeddings", True) else 2  # the embedding doubles as the head, or not
    return (heads * padded_vocab + model.context_length) * emb + model.n_layers * per_layer + 2 * emb


def check_fits_in_memory(model: Any) -> None:
    """The fp32 weights are built in host memory first: refuse a model larger than the machine's."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    weights = 4 * model_parameters(model)
    if weights > total:
        raise UserError(
            f"model: {model_parameters(model):,} parameters need {weights / 1e9:,.0f} GB for their weights alone, "
            f"more than this machine's {total / 1e9:,.0f} GB; lower model.emb_dim, model.n_layers, "
            "model.context_length or model.vocab_size"
        )


def check_optimizer(opt: Any) -> None:
    _require(opt.name == "adamw", "optimizer.name", opt.name, "must be 'adamw'")
    _require(0 < opt.lr < math.inf, "optimizer.lr", opt.lr, "must be > 0 and finite")
    _require(0 <= opt.weight_decay < math.inf, "optimizer.weight_decay", opt.weight_decay, "must be >= 0 and finite")
    betas = list(opt.betas)
    _require(len(betas) == 2 and all(0 <= b < 1 for b in betas), "optimizer.betas", betas, "two values in [0, 1)")
    _require(0 < opt.eps < math.inf, "optimizer.eps", opt.eps, "must be > 0 and finite")
    _require(opt.schedule in ("constant", "cosine"), "optimizer.schedule", opt.schedule, "one of constant, cosine")
    _require(opt.warmup_steps >= 0, "optimizer.warmup_steps", opt.warmup_steps, "must be >= 0")
    _require(0 <= opt.min_lr_ratio <= 1, "optimizer.min_lr_ratio", opt.min_lr_ratio, "must be in [0, 1]")
    _require(opt.weight_decay_on in DECAY_TARGETS, "optimizer.weight_decay_on", opt.weight_decay_on,
             "one of " + ", ".join(DECAY_TARGETS))


def check_decoding(dec: Any, vocab_size: int = VOCAB_SIZE) -> None:
    _require(
        0 <= dec.temperature < math.inf, "decoding.temperature", dec.temperature, "must be >= 0 and finite (0 is greedy)"
    )
    _require(0 <= dec.seed < 2**63, "decoding.seed", dec.seed, "must be in [0, 2**63)")
    if dec.top_k is not None:
        _require(1 <= dec.top_k <= vocab_size, "decoding.top_k", dec.top_k, f"must be in [1, {vocab_size}] or null")
    if dec.top_p is not None:
        _require(0 < dec.top_p <= 1, "decoding.top_p", dec.top_p, "must be in (0, 1] or null")
    if dec.eos_id is not None:
        _require(0 <= dec.eos_id < vocab_size, "decoding.eos_id", dec.eos_id, f"must be in [0, {vocab_size}) or null")
    _positive(dec, "decoding", "max_new_tokens", "num_samples")
    _require(dec.max_new_tokens <= MAX_NEW_TOKENS, "decoding.max_new_tokens", dec.max_new_tokens,
             f"must be in [1, {MAX_NEW_TOKENS}]")


LOG_MODEL = ("false", "best", "last", "all")


def check_logger(logger: Any) -> None:
    _require(logger.backend in ("wandb", "none"), "logger.backend", logger.backend, "one of wandb, none")
    modes = ("auto", "online", "offline", "disabled")
    _require(logger.mode in modes, "logger.mode", logger.mode, "one of " + ", ".join(modes))
    log_model = str(logger.log_model).lower()
    _require(log_model in LOG_MODEL, "logger.log_model", logger.log_model, "one of " + ", ".join(LOG_MODEL))
    for key in ("project", "entity"):
        name = logger[key]
        if name is not None:
            _require(0 < len(name) <= 128 and not set(name) & set(_WANDB_NAME_FORBIDDEN), f"logger.{key}", name,
                     f"1 to 128 characters, none of {_WANDB_NAME_FORBIDDEN}")


def check_device(device: str, key: str) -> None:
    _require(
        re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device) is not None,
        key,
        device,
        "one of auto, cpu, cuda, cuda:N, mps",
    )


def check_precision(precision: str, key: str) -> None:
    _require(precision in PRECISIONS, key, precision, "one of " + ", ".join(PRECISIONS))


def check_trainer(trainer: Any) -> None:
    _positive(trainer, "trainer", "epochs", "eval_freq", "eval_iter", "grad_accum", "keep_last")
    if trainer.checkpoint_freq is not None:
        _positive(trainer, "trainer", "checkpoint_freq")
    if trainer.checkpoint_minutes is not None:
        _require(trainer.checkpoint_minutes > 0, "trainer.checkpoint_minutes", trainer.checkpoint_minutes,
                 "must be > 0 or null")
    for key in ("max_steps", "sample_freq"):
        if trainer[key] is not None:
            _require(trainer[key] >= 1, f"trainer.{key}", trainer[key], "must be an integer >= 1 or null")
    if trainer.grad_clip is not None:
        clip = trainer.grad_clip
        _require(0 < clip < math.inf, "trainer.grad_clip", clip, "must be > 0 and finite, or null")
    _require(trainer.start_context != "", "trainer.start_context", trainer.start_context, "must not be empty")
    check_device(trainer.device, "trainer.device")
    check_precision(trainer.precision, "trainer.precision")
    if trainer.resume is not None:
        _require(trainer.resume.strip() != "", "trainer.resume", trainer.resume, "a run folder, auto, or null")


def check_known_keys(cfg: Any, schema: type) -> None:
    """Refuse keys that ``+key=value`` appended to a typed section."""
    for section in fields(schema):
        allowed = {f.name for f in fields(section.type)} if is_dataclass(section.type) else None
        if allowed is None or section.name not in cfg:
            continue
        for key in cfg[section.name]:
            _require(key in allowed, f"{section.name}.{key}", cfg[section.name][key], "unknown key")


def _strings(value: Any, key: str):
    """(dotted key, string) for every string in a config value, lists and sections included."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            yield from _strings(item, f"{key}.{name}")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        for item in value:
            yield from _strings(item, key)
    elif isinstance(value, str):
        yield key, value


def check_no_nul(cfg: Any, schema: type) -> None:
    """Refuse a NUL character in any string of the schema's sections (no path or name holds one)."""
    for section in fields(schema):
        for key, text in _strings(cfg[section.name], section.name):
            _require("\x00" not in text, key, text, "must not contain a NUL character")


def check_train_config(cfg: Any) -> None:
    """All range checks for a training run; data-dependent checks happen when the data loads."""
    check_known_keys(cfg, TrainConfig)
    check_no_nul(cfg, TrainConfig)
    _require(0 <= cfg.seed < 2**63, "seed", cfg.seed, "must be in [0, 2**63)")
    check_model(cfg.model)  # before data: data.stride follows model.context_length
    check_data(cfg.data)
    check_optimizer(cfg.optimizer)
    check_decoding(cfg.decoding, cfg.model.vocab_size)
    check_logger(cfg.logger)
    check_trainer(cfg.trainer)


def check_generate_config(cfg: Any, vocab_size: int = VOCAB_SIZE) -> None:
    """All range checks for a generate run; ``vocab_size`` is the checkpoint's model's."""
    check_known_keys(cfg, GenerateConfig)
    _require(cfg.prompt != "", "prompt", cfg.prompt, "must not be empty")
    _require(
        len(cfg.plot_temperatures) > 0 and all(t > 0 for t in cfg.plot_temperatures),
        "plot_temperatures", list(cfg.plot_temperatures), "one or more values > 0",
    )
    check_device(cfg.device, "device")
    check_decoding(cfg.decoding, vocab_size)
    check_logger(cfg.logger)


def check_eval_config(cfg: Any) -> None:
    """All range checks for an evaluation run (the stride against the model's context later)."""
    check_known_keys(cfg, EvalConfig)
    _require((cfg.ckpt is None) != (cfg.model.init is None), "ckpt", cfg.ckpt,
             "give either ckpt=<checkpoint file or run folder> or model.init=<Hugging Face folder>, not both")
    settings = cfg.eval
    _require(settings.split in ("valid", "test"), "eval.split", settings.split, "one of valid, test")
    _positive(settings, "eval", "stride", "batch_size")
    check_device(settings.device, "eval.device")
    check_precision(settings.precision, "eval.precision")
    check_logger(cfg.logger)


def check_bench_config(cfg: Any) -> None:
    """All range checks for a benchmark run."""
    check_known_keys(cfg, BenchConfig)
    check_no_nul(cfg, BenchConfig)
    check_model(cfg.model)
    check_optimizer(cfg.optimizer)
    bench = cfg.bench
    _positive(bench, "bench", "batch_size", "steps", "new_tokens", "num_samples")
    _require(bench.warmup >= 0, "bench.warmup", bench.warmup, "must be an integer >= 0")
    if bench.threads is not None:
        _require(bench.threads >= 1, "bench.threads", bench.threads, "must be an integer >= 1 or null")
    check_device(bench.device, "bench.device")
    check_precision(bench.precision, "bench.precision")
    sections = list(bench.sections)
    _require(
        bool(sections) and set(sections) <= set(BENCH_SECTIONS),
        "bench.sections",
        sections,
        "a non-empty list of " + ", ".join(BENCH_SECTIONS),
    )
