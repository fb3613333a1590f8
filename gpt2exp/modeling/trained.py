"""A trained model from its checkpoint file: a plain one, or a LoRA adapter on the base model it
names (`model.init`: a Hugging Face GPT-2 folder or name, or a gpt2exp checkpoint, itself
perhaps a LoRA run's), read and checked here.

A LoRA checkpoint holds the adapter (and its optimizer state), not the base: it records the
base's identity, `{"init": path, "sha256": hash of its weights}`, and loads only on that base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2exp.config import ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.modeling.checkpoint import load_checkpoint
from gpt2exp.modeling.hf_format import find_hf_folder, load_hf_weights
from gpt2exp.modeling.lora import apply_lora, load_adapter, merged_model, weights_sha256
from gpt2exp.modeling.model import GPTModel


def load_trained_model(path: Path, *, merge_lora: bool = True) -> tuple[GPTModel, dict]:
    """(the model on the CPU, the checkpoint) of a checkpoint file whose model can be built on
    this machine and whose weights fit its config; raises UserError naming what does not. A LoRA
    checkpoint's model is its base (read from `model.init`, checked) with its adapter, merged
    into plain weights unless `merge_lora` is false."""
    checkpoint = load_checkpoint(path)
    values = checkpoint["config"].get("model")
    if not isinstance(values, dict):
        raise UserError(f"ckpt: '{path}' holds no model config")
    try:
        cfg = ModelConfig.from_dict(values)
        cfg.check_fits_in_memory()
    except UserError as err:
        raise UserError(f"ckpt: '{path}' declares a model that cannot be built: {err}") from None
    if cfg.lora.rank:
        model = adapted_model(cfg, checkpoint, str(path))
        return (merged_model(model) if merge_lora else model), checkpoint
    expected, weights = GPTModel.unfilled(cfg).state_dict(), checkpoint["model"]  # before any memory is spent
    for name in sorted(expected.keys() | weights.keys()):
        if name not in weights or name not in expected or weights[name].shape != expected[name].shape:
            raise UserError(f"ckpt: '{path}' holds weights that do not fit its model config (first: {name})")
    model = GPTModel.unfilled(cfg, "cpu")
    model.load_state_dict(weights)
    return model, checkpoint


@dataclass
class Base:
    """The weights a fine-tune starts from and their identity (what a LoRA checkpoint records)."""

    weights: dict[str, torch.Tensor]
    identity: dict


def checkpoint_architecture(path: Path, **overrides) -> ModelConfig:
    """The model config of a gpt2exp checkpoint used as `model.init`, with `overrides`."""
    try:
        values = load_checkpoint(path)["config"].get("model")
    except UserError as err:
        raise UserError(f"model.init={path}: {err} (a Hugging Face model is a folder holding config.json)") from None
    if not isinstance(values, dict):
        raise UserError(f"model.init: '{path}' holds no model config")
    try:
        return ModelConfig.from_dict({**values, **overrides, "init": str(path)})
    except UserError as err:
        raise UserError(f"model.init: '{path}' declares a model that cannot be built: {err}") from None


def read_base_weights(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights `cfg.init` names (a gpt2exp checkpoint file, or a Hugging Face folder or
    model), as a state dict of ``GPTModel(cfg)``."""
    assert cfg.init is not None, "a base model needs model.init"
    path = Path(cfg.init).expanduser()
    if not path.is_file():
        return load_hf_weights(find_hf_folder(cfg.init), cfg)
    return load_trained_model(path.resolve())[0].state_dict()  # a LoRA run's: merged


def read_base(cfg: ModelConfig) -> Base:
    """`read_base_weights` and their identity."""
    weights = read_base_weights(cfg)
    return Base(weights, {"init": cfg.init, "sha256": weights_sha256(weights)})


def check_same_base(checkpoint: dict, base: Base, where: str) -> None:
    """A LoRA checkpoint loads only on the base it was trained on (by the hash of its weights);
    a UserError starts with `where`, the key and file."""
    recorded = checkpoint["extra"].get("lora_base")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        raise UserError(f"{where} is a LoRA adapter that does not record its base model")
    if recorded["sha256"] != base.identity["sha256"]:
        raise UserError(f"{where} is a LoRA adapter of another base: model.init='{base.identity['init']}' "
                        f"now holds weights with sha256 {base.identity['sha256'][:12]}, the adapter's base had "
                        f"{recorded['sha256'][:12]}; put its base back there")


def adapted_model(cfg: ModelConfig, checkpoint: dict, source: str) -> GPTModel:
    """The LoRA model of a checkpoint (on the CPU, unmerged): its base, checked, and its adapter."""
    try:
        base = read_base(cfg)
    except UserError as err:
        raise UserError(f"ckpt: '{source}' is a LoRA adapter whose base cannot be read ({err}); the base "
                        f"model.init='{cfg.init}' must be where it was trained") from None
    check_same_base(checkpoint, base, f"ckpt: '{source}'")
    model = GPTModel.unfilled(cfg, "cpu")
    model.load_state_dict(base.weights)
    model = apply_lora(model, base.identity)
    load_adapter(model, checkpoint["model"], f"ckpt: '{source}'")
    return model
