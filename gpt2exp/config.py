"""The typed configs the code runs on: one dataclass per config section, each default in one
place (here: the YAML options in conf/ hold only what they change), each range checked next to
its field in ``__post_init__``, raising ``UserError`` with one line naming the key.

The command line registers the top-level dataclasses as Hydra schemas (`gpt2exp.cli.schema`),
first in each primary config's defaults list, so a wrong type or an unknown key fails at compose
time; each entrypoint then turns the composed config into its dataclass once (`cli.typed`), which
runs the checks. Imports neither torch nor Hydra nor OmegaConf: the model, the entrypoints, the
tests and a notebook share it cheaply.
"""

import math
import os
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Optional, TypeVar

from gpt2exp.errors import UserError
from gpt2exp.tokenizer import VOCAB_SIZE


class Choice(str, Enum):
    """A key's fixed set of values: Hydra refuses any other value at compose time, naming the
    options. A member is a ``str`` equal to its value, and prints, formats and reprs as it; its
    name is its value (OmegaConf reads a choice by name). `plain` turns the members back into
    plain strings for what a run records."""

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return repr(self.value)


class DataSource(Choice):
    pydocs = "pydocs"
    text = "text"
    wikitext = "wikitext"
    hf = "hf"


class Sampler(Choice):
    windows = "windows"
    random = "random"


class WeightInit(Choice):
    gpt2 = "gpt2"
    torch_default = "torch_default"


class PositionEmbedding(Choice):
    learned = "learned"
    rope = "rope"


class Norm(Choice):
    layernorm = "layernorm"
    rmsnorm = "rmsnorm"


class Mlp(Choice):
    gelu = "gelu"
    relu2 = "relu2"
    swiglu = "swiglu"


class OptimizerName(Choice):
    adamw = "adamw"
    muon = "muon"


class Schedule(Choice):
    constant = "constant"
    cosine = "cosine"
    linear = "linear"
    wsd = "wsd"


class DecayTarget(Choice):
    matrices = "matrices"
    all = "all"


class PrecisionName(Choice):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Strategy(Choice):
    ddp = "ddp"  # a whole replica per process (DistributedDataParallel)
    fsdp = "fsdp"  # weights, gradients and optimizer state sharded (FSDP2: torch.distributed.fsdp.fully_shard)


class LoggerMode(Choice):
    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


class EvalSplit(Choice):
    valid = "valid"
    test = "test"


class InferenceLayout(Choice):
    auto = "auto"
    linear = "linear"
    transposed = "transposed"
    packed = "packed"


class InferenceWeights(Choice):
    fp32 = "fp32"
    bf16 = "bf16"


# Choices kept as plain strings: WikiText's config names are no Python names, YAML reads
# `log_model: false` as a boolean, and a list of choices is checked here alike.
WIKITEXT_NAMES = ("wikitext-2-raw-v1", "wikitext-2-v1", "wikitext-103-raw-v1", "wikitext-103-v1")
LOG_MODEL = ("false", "best", "last", "all")
BENCH_SECTIONS = ("peak", "train", "generate", "data", "tasks", "startup")
MODES = tuple(mode.value for mode in LoggerMode)
STRATEGIES = tuple(strategy.value for strategy in Strategy)
MAX_NEW_TOKENS = 65_536
MAX_LAYERS = 1024  # deeper than any published GPT; each block is a Python object, built one by one
_WANDB_NAME_FORBIDDEN = "/\\#?%:"
C = TypeVar("C", bound="Choice")
DEFAULT_PROMPT = "Every effort moves you"  # generate's prompt when none is given
MISSING: Any = "???"  # OmegaConf's mark of a value the command line must give (`ckpt=...`, `model=...`)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is not allowed: {allowed}")


def _at_least_one(section: object, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _require(value >= 1, f"{prefix}.{name}", value, "must be an integer >= 1")


def _one_of(value: Any, key: str, choices: tuple) -> None:
    _require(value in choices, key, value, "one of " + ", ".join(map(str, choices)))


def _choice(value: Any, key: str, choices: type[C]) -> C:
    """`value` as a member of `choices` (a section built from plain strings: a checkpoint's
    config, a notebook), or UserError naming the key and the options."""
    _one_of(value, key, tuple(choice.value for choice in choices))
    return choices(value)


def plain(section: Any) -> dict:
    """A config section as plain values (each `Choice` as its string), as a run records it:
    checkpoints, W&B, json files and config hashes."""
    return asdict(section, dict_factory=lambda items: {key: value.value if isinstance(value, Choice) else value
                                                       for key, value in items})


def _check_tasks(tasks: list[str], key: str) -> None:
    tasks = list(tasks)
    _require(all(isinstance(t, str) and t.strip() for t in tasks) and len(set(tasks)) == len(tasks), key, tasks,
             "a list of lm-evaluation-harness task names without repeats, e.g. [hellaswag,lambada_openai]")


def check_device(device: str, key: str) -> None:
    _require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device) is not None, key, device,
             "one of auto, cpu, cuda, cuda:N, mps")


@dataclass
class LoraConfig:
    """LoRA adapters (Hugging Face peft) on the Linear layers of every block; the base stays frozen."""

    rank: int = 0  # 0: off (the whole model trains)
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input
    targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.out_proj", "ff.fc", "ff.out_proj"])  # block layers

    def __post_init__(self) -> None:
        _require(self.rank >= 0, "model.lora.rank", self.rank, "must be an integer >= 0 (0: off)")
        _require(0 < self.alpha < math.inf, "model.lora.alpha", self.alpha, "must be > 0 and finite")
        _require(0.0 <= self.dropout < 1.0, "model.lora.dropout", self.dropout, "must be in [0, 1)")
        targets = list(self.targets)
        _require(len(targets) > 0 and len(set(targets)) == len(targets), "model.lora.targets", targets,
                 "a non-empty list of block layers without repeats, e.g. [attn.qkv,ff.fc]")


@dataclass
class ModelConfig:
    """GPT-2's shape, in the seed's keys; the defaults besides the size are OpenAI's."""

    context_length: int  # tokens the model sees at once (its positions)
    emb_dim: int  # the width of every token's vector
    n_heads: int  # attention heads per block; divides emb_dim
    n_layers: int  # transformer blocks
    vocab_size: int = VOCAB_SIZE  # token ids the model knows (GPT-2's BPE: 50257)
    drop_rate: float = 0.1  # dropout on embeddings, attention weights and residual branches; 0: off
    qkv_bias: bool = True  # a bias in the query/key/value projection
    pad_vocab_to: int = 1  # embedding rows rounded up to a multiple of this (64 suits GPU matmuls)
    tie_embeddings: bool = True  # the output head is the token embedding (GPT-2), or a Linear of its own
    weight_init: WeightInit = WeightInit.gpt2  # gpt2: N(0, 0.02), residual projections scaled; torch_default
    layer_norm_epsilon: float = 1e-5  # added to the variance in every LayerNorm (GPT-2's; some HF models differ)
    # Options beyond GPT-2 (README "Model options"); each default is GPT-2's.
    pos_emb: PositionEmbedding = PositionEmbedding.learned  # learned: a position table; rope: rotary embeddings
    rope_base: float = 10000.0  # rope: the base of the rotation frequencies
    norm: Norm = Norm.layernorm  # layernorm | rmsnorm (its epsilon: layer_norm_epsilon)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (no weights) before attention
    mlp: Mlp = Mlp.gelu  # gelu (4x wide) | relu2: relu(x)^2 (4x wide) | swiglu: silu(gate) * up (8/3x wide)
    zero_init_proj: bool = False  # the residual projections (attn.out_proj, ff.out_proj) start at zero
    bias: bool = True  # false: no bias in any Linear or norm (qkv_bias included)
    logit_softcap: Optional[float] = None  # logits become c * tanh(logits / c)
    init: Optional[str] = None  # a Hugging Face GPT-2 folder, gpt2 / gpt2-medium / ... from its cache, or a gpt2exp checkpoint
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):  # as a checkpoint records it
            self.lora = LoraConfig(**self.lora)
        _require(self.lora.rank == 0 or self.init is not None, "model.lora.rank", self.lora.rank,
                 "needs model.init=<Hugging Face folder, gpt2 name or gpt2exp checkpoint>: the base it adapts")
        _at_least_one(self, "model", "context_length", "emb_dim", "n_heads", "n_layers")
        _require(self.n_layers <= MAX_LAYERS, "model.n_layers", self.n_layers, f"must be in [1, {MAX_LAYERS}]")
        _require(self.emb_dim % self.n_heads == 0, "model.n_heads", self.n_heads,
                 f"must divide model.emb_dim={self.emb_dim}")
        _require(self.vocab_size >= VOCAB_SIZE, "model.vocab_size", self.vocab_size, f"must be >= {VOCAB_SIZE}")
        _require(1 <= self.pad_vocab_to <= 4096, "model.pad_vocab_to", self.pad_vocab_to, "must be in [1, 4096]")
        _require(0.0 <= self.drop_rate < 1.0, "model.drop_rate", self.drop_rate, "must be in [0, 1)")
        self.weight_init = _choice(self.weight_init, "model.weight_init", WeightInit)
        _require(0 < self.layer_norm_epsilon < 1, "model.layer_norm_epsilon", self.layer_norm_epsilon,
                 "must be in (0, 1)")
        self.pos_emb = _choice(self.pos_emb, "model.pos_emb", PositionEmbedding)
        _require(1 < self.rope_base < math.inf, "model.rope_base", self.rope_base, "must be > 1 and finite")
        _require(self.pos_emb != "rope" or self.emb_dim // self.n_heads % 2 == 0, "model.pos_emb", self.pos_emb,
                 f"needs an even head width (model.emb_dim / model.n_heads = {self.emb_dim // self.n_heads})")
        self.norm = _choice(self.norm, "model.norm", Norm)
        self.mlp = _choice(self.mlp, "model.mlp", Mlp)
        _require(self.logit_softcap is None or 0 < self.logit_softcap < math.inf, "model.logit_softcap",
                 self.logit_softcap, "must be > 0 and finite, or null (off)")

    def beyond_gpt2(self) -> Optional[str]:
        """The first option (as key=value) that OpenAI's GPT-2 (transformers' GPT2LMHeadModel) lacks, or None."""
        gpt2 = {"pos_emb": "learned", "norm": "layernorm", "qk_norm": False, "mlp": "gelu", "bias": True,
                "logit_softcap": None}
        return next((f"model.{key}={getattr(self, key)}" for key, value in gpt2.items()
                     if getattr(self, key) != value), None)

    @property
    def mlp_hidden_dim(self) -> int:
        """The MLP's inner width: 4 * emb_dim, or 8/3 of it for swiglu (the same parameters with its gate)."""
        return 8 * self.emb_dim // 3 if self.mlp == "swiglu" else 4 * self.emb_dim

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """The model config a checkpoint records (older ones lack the newer keys, which keep their
        defaults); raises UserError for one this gpt2exp cannot build."""
        try:
            return cls(**values)
        except TypeError as err:
            raise UserError(f"a model config this gpt2exp does not know ({err})") from None

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to

    def num_parameters(self) -> int:
        """The model's parameter count (a tied embedding counted once)."""
        emb, hidden = self.emb_dim, self.mlp_hidden_dim
        fc_out = 2 * hidden if self.mlp == "swiglu" else hidden
        norm = (2 if self.norm == "layernorm" and self.bias else 1) * emb
        attn = 4 * emb * emb + ((3 if self.qkv_bias else 0) + 1) * emb * self.bias
        mlp = 2 * emb * hidden + (emb * hidden if self.mlp == "swiglu" else 0) + (fc_out + emb) * self.bias
        heads = 1 if self.tie_embeddings else 2  # the embedding doubles as the head, or not
        positions = self.context_length if self.pos_emb == "learned" else 0
        return (heads * self.padded_vocab_size + positions) * emb + self.n_layers * (attn + mlp + 2 * norm) + norm

    def check_fits_in_memory(self) -> None:
        """The fp32 weights are built in host memory first: refuse a model larger than the machine's."""
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        count = self.num_parameters()
        if 4 * count > total:
            raise UserError(
                f"model: {count:,} parameters need {4 * count / 1e9:,.0f} GB for their weights alone, "
                f"more than this machine's {total / 1e9:,.0f} GB; lower model.emb_dim, model.n_layers, "
                "model.context_length or model.vocab_size"
            )


@dataclass
class DataConfig:
    source: DataSource = DataSource.pydocs  # pydocs | text | wikitext | hf
    path: Optional[str] = None  # text: a file, a folder of *.txt files, or a glob; hf: a dataset or local files
    name: Optional[str] = None  # wikitext: the WikiText config; hf: the dataset's config, if it has several
    local_dir: Optional[str] = None  # wikitext: a folder with the released wiki.*.tokens (or .raw) files
    text_column: str = "text"  # hf: the column that holds the text
    split_train: str = "train"  # hf: the hub dataset's splits (local files: one, cut at train_ratio)
    split_val: Optional[str] = "validation"  # null: the last 1 - train_ratio of split_train's tokens
    streaming: bool = False  # hf: read the hub dataset as it downloads, never whole on disk
    separator: str = "<|endoftext|>"  # hf: between rows (documents); "" joins them as they are
    train_ratio: float = 0.9  # the share of a corpus's tokens that trains (the rest validates)
    batch_size: int = 8  # windows per training step (per process)
    stride: Optional[int] = None  # tokens between window starts; null: model.context_length (no overlap)
    sampler: Sampler = Sampler.windows  # windows: each epoch every window once; random: windows at random offsets
    shuffle: bool = True  # windows: a new order each epoch
    drop_last: bool = True  # skip an epoch's last, smaller batch
    num_workers: int = 0  # DataLoader worker processes; 0: batches made in the training process
    cache_dir: Optional[str] = None  # tokenized corpora; null: $GPT2EXP_CACHE_DIR, else ~/.cache/gpt2exp

    def __post_init__(self) -> None:
        self.source = _choice(self.source, "data.source", DataSource)
        if self.source == "wikitext":
            _one_of(self.name, "data.name", WIKITEXT_NAMES)
        if self.source in ("text", "hf"):
            _require(bool(self.path), "data.path", self.path, f"data={self.source} needs one")
        _at_least_one(self, "data", "batch_size")
        if self.stride is not None:
            _at_least_one(self, "data", "stride")
        _require(0 < self.train_ratio < 1, "data.train_ratio", self.train_ratio, "must be between 0 and 1 (exclusive)")
        _require(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        self.sampler = _choice(self.sampler, "data.sampler", Sampler)


@dataclass
class OptimizerConfig:
    """AdamW; weight decay on the weight matrices only (or `weight_decay_on: all`). With
    `name: muon`, Muon takes the blocks' weight matrices (`muon_*` keys) and AdamW the rest."""

    name: OptimizerName = OptimizerName.adamw  # the optimizer
    lr: float = 1e-3  # the peak learning rate (after warmup)
    weight_decay: float = 0.1  # AdamW's decoupled weight decay, on the weights weight_decay_on names
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW's moment decay rates
    eps: float = 1e-8  # added to AdamW's denominator
    # After a linear warmup: constant | cosine or linear (to min_lr_ratio * lr at the last step) |
    # wsd (warmup-stable-decay: constant, then linear to min_lr_ratio * lr over the last decay_fraction of steps)
    schedule: Schedule = Schedule.cosine
    warmup_steps: int = 20  # steps of linear warmup from 0 to lr
    min_lr_ratio: float = 0.1  # the learning rate the schedule ends at, as a share of lr
    decay_fraction: float = 0.2  # wsd: the share of all steps that decays
    weight_decay_on: DecayTarget = DecayTarget.matrices  # matrices: the weight matrices only; all: every parameter
    muon_lr: float = 0.02  # muon: the learning rate of the blocks' weight matrices
    muon_weight_decay: float = 0.0  # muon: the weight decay of the blocks' weight matrices
    muon_momentum: float = 0.95  # muon: its momentum

    def __post_init__(self) -> None:
        self.name = _choice(self.name, "optimizer.name", OptimizerName)
        _require(0 < self.lr < math.inf, "optimizer.lr", self.lr, "must be > 0 and finite")
        _require(0 <= self.weight_decay < math.inf, "optimizer.weight_decay", self.weight_decay,
                 "must be >= 0 and finite")
        betas = list(self.betas)
        _require(len(betas) == 2 and all(0 <= b < 1 for b in betas), "optimizer.betas", betas, "two values in [0, 1)")
        _require(0 < self.eps < math.inf, "optimizer.eps", self.eps, "must be > 0 and finite")
        self.schedule = _choice(self.schedule, "optimizer.schedule", Schedule)
        _require(self.warmup_steps >= 0, "optimizer.warmup_steps", self.warmup_steps, "must be >= 0")
        _require(0 <= self.min_lr_ratio <= 1, "optimizer.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        _require(0 < self.decay_fraction <= 1, "optimizer.decay_fraction", self.decay_fraction, "must be in (0, 1]")
        _require(0 < self.muon_lr < math.inf, "optimizer.muon_lr", self.muon_lr, "must be > 0 and finite")
        _require(0 <= self.muon_weight_decay < math.inf, "optimizer.muon_weight_decay", self.muon_weight_decay,
                 "must be >= 0 and finite")
        _require(0 <= self.muon_momentum < 1, "optimizer.muon_momentum", self.muon_momentum, "must be in [0, 1)")
        self.weight_decay_on = _choice(self.weight_decay_on, "optimizer.weight_decay_on", DecayTarget)


@dataclass
class DecodingConfig:
    """How continuations are drawn; the defaults are greedy decoding."""

    temperature: float = 0.0  # 0 is greedy
    top_k: Optional[int] = None  # draw from the k likeliest tokens only; null: all
    top_p: Optional[float] = None  # nucleus: draw from the likeliest tokens whose probability reaches top_p; null: all
    eos_id: Optional[int] = None  # stop a continuation at this token
    max_new_tokens: int = 40  # tokens added to the prompt, at most
    num_samples: int = 3  # continuations drawn and scored (gen/*); greedy makes one
    seed: int = 123  # sample i draws from a generator seeded seed + i

    def __post_init__(self) -> None:
        _require(0 <= self.temperature < math.inf, "decoding.temperature", self.temperature,
                 "must be >= 0 and finite (0 is greedy)")
        _require(0 <= self.seed < 2**63, "decoding.seed", self.seed, "must be in [0, 2**63)")
        if self.top_p is not None:
            _require(0 < self.top_p <= 1, "decoding.top_p", self.top_p, "must be in (0, 1] or null")
        _at_least_one(self, "decoding", "max_new_tokens", "num_samples")
        _require(self.max_new_tokens <= MAX_NEW_TOKENS, "decoding.max_new_tokens", self.max_new_tokens,
                 f"must be in [1, {MAX_NEW_TOKENS}]")
        if self.top_k is not None:
            _require(self.top_k >= 1, "decoding.top_k", self.top_k, "must be >= 1 or null")
        if self.eos_id is not None:
            _require(self.eos_id >= 0, "decoding.eos_id", self.eos_id, "must be >= 0 or null")

    def check_vocab(self, vocab_size: int) -> None:
        """The token ids and top_k against a model's vocabulary."""
        if self.top_k is not None:
            _require(1 <= self.top_k <= vocab_size, "decoding.top_k", self.top_k, f"must be in [1, {vocab_size}] or null")
        if self.eos_id is not None:
            _require(0 <= self.eos_id < vocab_size, "decoding.eos_id", self.eos_id,
                     f"must be in [0, {vocab_size}) or null")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def settings(self) -> dict:
        """What a logged sample records of the settings that drew it."""
        return {key: getattr(self, key) for key in ("temperature", "top_k", "top_p", "max_new_tokens", "eos_id", "seed")}


@dataclass
class LoggerConfig:
    """Where a run's metrics go besides its own files: each tool is on when its flag is (the
    presets logger=wandb|tensorboard|csv|none turn on one; logger=[wandb,tensorboard] several).
    The other keys are W&B's; mode auto: online when an API key is configured, else offline."""

    wandb: bool = False  # Weights & Biases, in <run folder>/wandb
    tensorboard: bool = False  # TensorBoard event files in <run folder>/tensorboard
    csv: bool = False  # <run folder>/metrics.csv, one row per step
    mode: LoggerMode = LoggerMode.auto  # W&B: auto (online with an API key, else offline) | online | offline | disabled
    project: str = "gpt2exp"  # the W&B project
    entity: Optional[str] = None  # the W&B team or user; null: your default
    group: Optional[str] = None  # the W&B run group; null: a multirun's sweep folder, else none
    tags: list[str] = field(default_factory=list)  # W&B tags (a multirun adds the chosen options)
    name: Optional[str] = None  # the W&B run name; null: W&B's (a multirun job: its overrides)
    log_model: str = "false"  # checkpoints as W&B model artifacts: false | best | last | all

    def __post_init__(self) -> None:
        self.log_model = str(self.log_model).lower()  # YAML's `false` arrives as "False"
        self.mode = _choice(self.mode, "logger.mode", LoggerMode)
        _one_of(self.log_model, "logger.log_model", LOG_MODEL)
        for key in ("project", "entity"):
            name = getattr(self, key)
            if name is not None:
                _require(0 < len(name) <= 128 and not set(name) & set(_WANDB_NAME_FORBIDDEN), f"logger.{key}", name,
                         f"1 to 128 characters, none of {_WANDB_NAME_FORBIDDEN}")


@dataclass
class EarlyStoppingConfig:
    """Stop a run whose val loss has stopped improving (it ends with its final checkpoint)."""

    patience: Optional[int] = None  # evaluations in a row without a new best val loss; 0 or null: off
    min_delta: float = 0.0  # how far below the best so far a val loss must be to count as a new best

    def __post_init__(self) -> None:
        if self.patience is not None:
            _require(self.patience >= 0, "trainer.early_stopping.patience", self.patience,
                     "must be an integer >= 0, or null (0 and null: off)")
        _require(0 <= self.min_delta < math.inf, "trainer.early_stopping.min_delta", self.min_delta,
                 "must be >= 0 and finite")


@dataclass
class TrainerConfig:
    """The loop; the defaults are the CPU quickstart's (about 3 minutes on 2 cores)."""

    epochs: int = 1  # passes over the training windows (when max_steps is null)
    max_steps: Optional[int] = 800  # null: `epochs` whole epochs
    eval_freq: int = 100  # steps between evaluations (train and val loss)
    eval_iter: int = 5  # batches each evaluation averages
    sample_freq: Optional[int] = 200  # null: after every epoch
    start_context: str = "Return the"  # the prompt of the samples drawn while training
    grad_accum: int = 1  # batches whose gradients add up to one optimizer step
    grad_clip: Optional[float] = 1.0  # clip the gradient norm to this; null: no clipping
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: PrecisionName = PrecisionName.auto  # auto | fp32 | bf16 | fp16 (CUDA)
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    strategy: Strategy = Strategy.ddp  # with several processes (torchrun): ddp | fsdp (sharded; torchrun only)
    progress: bool = True  # a progress bar on a terminal
    checkpoint_freq: Optional[int] = None  # steps between checkpoints; null: by time only
    checkpoint_minutes: Optional[float] = 30.0  # wall minutes between checkpoints; null: by steps only
    keep_last: int = 1  # step checkpoints kept; 2 or more: resume falls back to an older one if the newest is bad
    keep_best: bool = True  # best.pt: the weights (only) at the lowest val loss
    save_optimizer: bool = True  # AdamW's state in step checkpoints, so that a resume continues exactly
    test: Optional[bool] = None  # score the test split at the end; null: for WikiText when it can be read
    resume: Optional[str] = None  # a run folder, or auto: the newest run folder with this config
    skip_nonfinite: bool = False  # skip steps whose loss or gradient is NaN/inf instead of stopping
    reuse_wait_minutes: float = 60.0  # a sweep job waits this long for another job training its model, then trains
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    overfit_batches: Optional[int] = None  # train and validate on the first N train batches only (debug=overfit)
    eval_tasks: list[str] = field(default_factory=list)  # lm-evaluation-harness tasks scored in the loop (tasks/...)
    eval_tasks_limit: Optional[int] = 100  # examples per task at each of those evaluations; null: all
    eval_tasks_freq: Optional[int] = None  # steps between them; null: every eval_freq steps
    eval_tasks_include_path: Optional[str] = None  # a folder of your own task YAMLs

    def __post_init__(self) -> None:
        _at_least_one(self, "trainer", "epochs", "eval_freq", "eval_iter", "grad_accum", "keep_last")
        _check_tasks(self.eval_tasks, "trainer.eval_tasks")
        for key in ("max_steps", "sample_freq", "checkpoint_freq", "overfit_batches", "eval_tasks_limit",
                    "eval_tasks_freq"):
            if getattr(self, key) is not None:
                _require(getattr(self, key) >= 1, f"trainer.{key}", getattr(self, key),
                         "must be an integer >= 1 or null")
        if self.checkpoint_minutes is not None:
            _require(self.checkpoint_minutes > 0, "trainer.checkpoint_minutes", self.checkpoint_minutes,
                     "must be > 0 or null")
        if self.grad_clip is not None:
            _require(0 < self.grad_clip < math.inf, "trainer.grad_clip", self.grad_clip,
                     "must be > 0 and finite, or null")
        _require(self.start_context != "", "trainer.start_context", self.start_context, "must not be empty")
        if self.eval_tasks_freq is not None:
            _require(self.eval_tasks_freq % self.eval_freq == 0, "trainer.eval_tasks_freq", self.eval_tasks_freq,
                     f"must be a multiple of trainer.eval_freq={self.eval_freq} (tasks run at evaluations)")
        check_device(self.device, "trainer.device")
        self.precision = _choice(self.precision, "trainer.precision", PrecisionName)
        self.strategy = _choice(self.strategy, "trainer.strategy", Strategy)
        _require(0 <= self.reuse_wait_minutes < math.inf, "trainer.reuse_wait_minutes", self.reuse_wait_minutes,
                 "must be >= 0 and finite")
        if self.resume is not None:
            _require(self.resume.strip() != "", "trainer.resume", self.resume, "a run folder, auto, or null")


@dataclass
class InferenceConfig:
    """How a CPU lays out a model's weights to generate or score (modeling/inference_layout.py)."""

    # auto: the fastest for this CPU and model shape, measured at the first inference (kept if measured quietly) |
    # linear (PyTorch's own) | transposed | packed (oneDNN's blocked layout)
    layout: InferenceLayout = InferenceLayout.auto
    weights: InferenceWeights = InferenceWeights.fp32  # bf16: packed bf16 copies (CPUs with native bf16)

    def __post_init__(self) -> None:
        self.layout = _choice(self.layout, "inference.layout", InferenceLayout)
        self.weights = _choice(self.weights, "inference.weights", InferenceWeights)


@dataclass
class TrainConfig:
    """``python -m gpt2exp.train``."""

    model: ModelConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # the CPU layout `trainer.test` scores in
    seed: int = 123  # seeds the weights' initialisation, the data order and dropout

    def __post_init__(self) -> None:
        _require(0 <= self.seed < 2**63, "seed", self.seed, "must be in [0, 2**63)")
        _require(self.trainer.keep_best or self.logger.log_model not in ("best", "all"), "logger.log_model",
                 self.logger.log_model, "needs trainer.keep_best=true (best.pt is the checkpoint it logs as "
                 "'best'), or use logger.log_model=last")
        self.decoding.check_vocab(self.model.vocab_size)
        _require(self.optimizer.name != "muon" or not self.model.lora.rank, "model.lora.rank", self.model.lora.rank,
                 "needs optimizer=adamw (optimizer=muon trains whole weight matrices, not adapters)")
        if self.data.stride is None:
            self.data.stride = self.model.context_length


@dataclass
class GenerateConfig:
    """``python -m gpt2exp.generate``."""

    ckpt: str = MISSING  # a checkpoint file, a run folder, or wandb:<entity/project/name:alias>
    prompt: Optional[str] = None  # the text to continue; null: "Every effort moves you" (without prompt_file)
    prompt_file: Optional[str] = None  # a UTF-8 file of prompts, one per line (blank lines skipped), instead of prompt
    interactive: bool = False  # load the model once, then continue each line typed on stdin until end of input or Ctrl-C
    batch_size: int = 8  # continuations decoded at once (num_samples per prompt, rows of several prompts together)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    plot_temperatures: list[float] = field(default_factory=lambda: [1.0, 0.3, 1.5])  # the next-token figure's
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        _require(self.prompt != "", "prompt", self.prompt, "must not be empty")
        _require(self.prompt_file != "", "prompt_file", self.prompt_file, "a file of prompts, one per line, or null")
        _require(self.prompt is None or self.prompt_file is None, "prompt_file", self.prompt_file,
                 "give either prompt=<text> or prompt_file=<file>, not both")
        _require(not self.interactive or (self.prompt is None and self.prompt_file is None), "interactive",
                 self.interactive, "reads its prompts from stdin: drop prompt= and prompt_file=")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "must be an integer >= 1")
        if self.prompt is None and self.prompt_file is None and not self.interactive:
            self.prompt = DEFAULT_PROMPT
        _require(len(self.plot_temperatures) > 0 and all(t > 0 for t in self.plot_temperatures),
                 "plot_temperatures", list(self.plot_temperatures), "one or more values > 0")
        check_device(self.device, "device")


@dataclass
class ExportConfig:
    """``python -m gpt2exp.export``."""

    ckpt: str = MISSING  # a checkpoint file or a run folder
    out: str = MISSING  # the Hugging Face folder to write: a new or empty one
    merge_lora: bool = True  # false: a LoRA run as out/base (the base) and out/adapter (its PEFT adapter)
    push_to_hub: Optional[str] = None  # a Hugging Face repo id, <user or org>/<name>: out uploaded there (made if new)
    eval_runs: list[str] = field(default_factory=list)  # eval run folders (or eval.json files) for the model card
    license: str = "mit"  # the model card's license, a Hugging Face license id (mit, apache-2.0, cc-by-4.0, ...)

    def __post_init__(self) -> None:
        if self.push_to_hub is not None:
            _require(re.fullmatch(r"[\w.-]{1,96}/[\w.-]{1,96}", self.push_to_hub) is not None, "push_to_hub",
                     self.push_to_hub, "a Hugging Face repo id, <user or org>/<name>")
        _require(re.fullmatch(r"[\w.-]+", self.license) is not None, "license", self.license,
                 "a Hugging Face license id, e.g. mit, apache-2.0, cc-by-4.0, other")


@dataclass
class BenchSettings:
    batch_size: int = 8  # training section: windows per step
    steps: int = 10  # timed training steps per model (after warmup), taken in turn
    warmup: int = 2  # untimed steps first
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: PrecisionName = PrecisionName.fp32  # auto | fp32 | bf16 | fp16 (CUDA), for both models
    compile: bool = False  # torch.compile both models for the training section
    activation_checkpointing: bool = False  # recompute each block's activations in backward (both models)
    transformers: bool = True  # train transformers' GPT2LMHeadModel beside gpt2exp (false: gpt2exp alone)
    threads: Optional[int] = None  # torch.set_num_threads; null keeps PyTorch's default
    new_tokens: int = 32  # generation section: new tokens per run (greedy at batch 1, then sampled)
    num_samples: int = 8  # generation section: continuations sampled at once (batch num_samples)
    text_path: Optional[str] = None  # data section: a UTF-8 file to tokenize; null: the pydocs corpus
    corpus_mb: float = 200.0  # data section: the generated corpus that data=hf and datasets.map tokenize
    tasks_questions: int = 20  # tasks section: questions (4 choices each) of its HellaSwag-shaped task
    startup_runs: int = 3  # startup section: 1-step training runs timed, one after another
    # of peak, train, generate, data, tasks (lm-evaluation-harness scoring beside HFLM), startup (a 1-step
    # `gpt2exp.train` run timed to its exit); the last two only when named
    sections: list[str] = field(default_factory=lambda: [s for s in BENCH_SECTIONS if s not in ("tasks", "startup")])

    def __post_init__(self) -> None:
        _at_least_one(self, "bench", "batch_size", "steps", "new_tokens", "num_samples", "tasks_questions",
                      "startup_runs")
        _require(self.warmup >= 0, "bench.warmup", self.warmup, "must be an integer >= 0")
        _require(0 < self.corpus_mb < math.inf, "bench.corpus_mb", self.corpus_mb, "must be > 0")
        if self.threads is not None:
            _require(self.threads >= 1, "bench.threads", self.threads, "must be an integer >= 1 or null")
        check_device(self.device, "bench.device")
        self.precision = _choice(self.precision, "bench.precision", PrecisionName)
        _require(bool(self.sections) and set(self.sections) <= set(BENCH_SECTIONS), "bench.sections",
                 list(self.sections), "a non-empty list of " + ", ".join(BENCH_SECTIONS))


@dataclass
class BenchConfig:
    """``python -m gpt2exp.bench``."""

    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    bench: BenchSettings = field(default_factory=BenchSettings)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    seed: int = 123  # seeds the models' weights and the benchmark's data


@dataclass
class EvalModel:
    init: Optional[str] = None  # a Hugging Face GPT-2 folder (or name in its cache), instead of ckpt


@dataclass
class EvalSettings:
    split: EvalSplit = EvalSplit.test  # valid | test (WikiText); data=text scores the whole file
    stride: Optional[int] = None  # tokens between window starts (each token scored once); null: min(512, context)
    batch_size: int = 4  # windows scored at once
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: PrecisionName = PrecisionName.fp32  # auto | fp32 | bf16 | fp16 (CUDA)
    # lm-evaluation-harness tasks (the `tasks` extra); empty: the strided perplexity above
    tasks: list[str] = field(default_factory=list)  # e.g. [hellaswag,lambada_openai]
    num_fewshot: Optional[int] = None  # null: each task's own default
    limit: Optional[int] = None  # examples per task; null: all
    include_path: Optional[str] = None  # a folder of your own task YAMLs (local JSON lines: offline)

    def __post_init__(self) -> None:
        self.split = _choice(self.split, "eval.split", EvalSplit)
        _at_least_one(self, "eval", "batch_size")
        _check_tasks(self.tasks, "eval.tasks")
        if self.num_fewshot is not None:
            _require(self.num_fewshot >= 0, "eval.num_fewshot", self.num_fewshot, "must be an integer >= 0 or null")
        if self.limit is not None:
            _at_least_one(self, "eval", "limit")
        if self.stride is not None:
            _at_least_one(self, "eval", "stride")
        check_device(self.device, "eval.device")
        self.precision = _choice(self.precision, "eval.precision", PrecisionName)


@dataclass
class EvalConfig:
    """``python -m gpt2exp.eval``."""

    ckpt: Optional[str] = None  # a checkpoint file or run folder (with eval.tasks also a Hugging Face folder or gpt2 name)
    model: EvalModel = field(default_factory=EvalModel)
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        _require((self.ckpt is None) != (self.model.init is None), "ckpt", self.ckpt,
                 "give either ckpt=<checkpoint file or run folder> or model.init=<Hugging Face folder>, not both")
