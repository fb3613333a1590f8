"""LoRA adapters (`model.lora`) through Hugging Face peft on GPTModel's own Linear layers, and
the base model they adapt (`model.init`: an HF GPT-2 folder or name, or a gpt2exp checkpoint).

A LoRA checkpoint holds the adapter (and its optimizer state), not the base: it records the
base's identity, `{"init": path, "sha256": hash of its weights}`, and loads only on that base.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from gpt2exp.atomic import folder_atomic
from gpt2exp.config import LoraConfig, ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.modeling.model import GPTModel

ADAPTER = "default"  # peft's adapter name; the saved weights leave it out


@dataclass
class Base:
    """The weights a fine-tune starts from and their identity (what a LoRA checkpoint records)."""

    weights: dict[str, torch.Tensor]
    identity: dict


def checkpoint_base(init: str) -> Path | None:
    """The gpt2exp checkpoint that `model.init` names (a .pt file, or a run folder's last.pt);
    None when it names a Hugging Face folder or model instead."""
    path = Path(init).expanduser()
    if path.is_file():
        return path.resolve()
    if (path / "checkpoints" / "last.pt").is_file() and not (path / "config.json").is_file():
        return (path / "checkpoints" / "last.pt").resolve()
    return None


def checkpoint_architecture(path: Path, **overrides) -> ModelConfig:
    """The model config of a gpt2exp checkpoint used as `model.init`, with `overrides`."""
    from gpt2exp.modeling.checkpoint import load_checkpoint

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
    """The weights `cfg.init` names, as a state dict of ``GPTModel(cfg)``."""
    from gpt2exp.modeling.checkpoint import load_trained_model
    from gpt2exp.modeling.hf_format import find_hf_folder, load_hf_weights

    path = checkpoint_base(cfg.init)
    if path is None:
        return load_hf_weights(find_hf_folder(cfg.init), cfg)
    return load_trained_model(path)[0].state_dict()  # a LoRA run's: merged


def read_base(cfg: ModelConfig) -> Base:
    """`read_base_weights` and their identity."""
    weights = read_base_weights(cfg)
    return Base(weights, {"init": cfg.init, "sha256": weights_sha256(weights)})


def weights_sha256(weights: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of a state dict's names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(memoryview(tensor.view(torch.uint8).numpy()))
    return digest.hexdigest()


def block_layers(model: GPTModel) -> dict[str, nn.Linear]:
    """The Linear layers of a block, by their names in it (attn.qkv, ff.fc, ...)."""
    return {name: module for name, module in model.blocks[0].named_modules() if isinstance(module, nn.Linear)}


def check_lora(cfg: ModelConfig) -> None:
    """`model.lora.targets` name Linear layers of the model's blocks and `rank` fits each of them;
    raises UserError naming the key. The model is built on the meta device: no memory is spent."""
    lora = cfg.lora
    if find_spec("peft") is None:
        raise UserError(f"model.lora.rank={lora.rank} needs Hugging Face peft: pip install 'gpt2exp[lora]'")
    with torch.device("meta"):
        layers = block_layers(GPTModel(cfg))
    for target in lora.targets:
        if target not in layers:
            raise UserError(f"model.lora.targets: {target!r} matches no Linear layer of the model's blocks "
                            f"(they are {', '.join(layers)})")
        layer = layers[target]
        if lora.rank > min(layer.in_features, layer.out_features):
            raise UserError(f"model.lora.rank={lora.rank} is larger than layer {target} ({layer.in_features} -> "
                            f"{layer.out_features}): must be at most {min(layer.in_features, layer.out_features)}")


def apply_lora(model: GPTModel, base_identity: dict) -> GPTModel:
    """Freeze `model` (holding the base's weights) and add `model.cfg.lora`'s adapters in place;
    only they train. The model keeps `base_identity` as ``model.lora_base``."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    lora = model.cfg.lora
    check_lora(model.cfg)
    targets = "|".join(t.replace(".", r"\.") for t in lora.targets)
    peft_config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=rf"blocks\.\d+\.({targets})")
    model = inject_adapter_in_model(peft_config, model, adapter_name=ADAPTER)
    model.lora_base = base_identity
    return model


def is_lora(model: nn.Module) -> bool:
    return getattr(model, "lora_base", None) is not None


def saved_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds of `model`: the adapter's weights for a LoRA model, else all."""
    if not is_lora(model):
        return model.state_dict()
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=ADAPTER)


def load_adapter(model: GPTModel, weights: dict[str, torch.Tensor], where: str) -> None:
    """The adapter weights a checkpoint holds into a LoRA `model`; names and shapes must fit
    (else a UserError starting with `where`, the key and file)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    expected = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    for name in sorted(expected.keys() | weights.keys()):
        if name not in weights or name not in expected or weights[name].shape != expected[name].shape:
            raise UserError(f"{where} holds adapter weights that do not fit model.lora (first: {name})")
    set_peft_model_state_dict(model, weights, adapter_name=ADAPTER)


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
    model = GPTModel(cfg)
    model.load_state_dict(base.weights)
    model = apply_lora(model, base.identity)
    load_adapter(model, checkpoint["model"], f"ckpt: '{source}'")
    return model


@torch.no_grad()
def merged_model(model: GPTModel) -> GPTModel:
    """A plain GPTModel whose weights are the LoRA model's base plus its adapters' product
    (`model` itself is left as it is)."""
    from peft.tuners.lora import LoraLayer

    weights = {name.replace(".base_layer.", "."): tensor.clone() for name, tensor in model.state_dict().items()
               if ".lora_" not in name}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            weights[f"{name}.weight"] += module.get_delta_weight(ADAPTER)
    merged = GPTModel(replace(model.cfg, lora=LoraConfig())).to(next(model.parameters()).device)
    merged.load_state_dict(weights)
    return merged.train(model.training)


def base_model(model: GPTModel) -> GPTModel:
    """A plain GPTModel holding the LoRA model's base weights alone."""
    weights = {name.replace(".base_layer.", "."): tensor for name, tensor in model.state_dict().items()
               if ".lora_" not in name}
    base = GPTModel(replace(model.cfg, lora=LoraConfig()))
    base.load_state_dict(weights)
    return base


def write_base_and_adapter(model: GPTModel, out: Path) -> Path:
    """`out` (absent or an empty folder) as `base/`, the base as a Hugging Face GPT-2 folder, and
    `adapter/`, the adapter as a PEFT folder (``PeftModel.from_pretrained(GPT2LMHeadModel...,
    out / "adapter")``); written into a hidden sibling renamed to `out` at the end, so a failed
    write leaves nothing (nor the parent folders it made)."""
    from gpt2exp.modeling.hf_format import write_hf_folder

    with folder_atomic(out) as staging:
        write_hf_folder(base_model(model), staging / "base")
        _write_peft_adapter(model, staging / "adapter", base_path=(out / "base").resolve())
    return out


def _write_peft_adapter(model: GPTModel, folder: Path, base_path: Path) -> None:
    """adapter_config.json and adapter_model.safetensors as peft saves a LoRA adapter of
    transformers' GPT2LMHeadModel: its layer names, Conv1D layers (fan_in_fan_out)."""
    from peft import LoraConfig as PeftLoraConfig
    from safetensors.torch import save_file

    from gpt2exp.modeling.hf_format import HF_LAYERS

    lora = model.cfg.lora
    config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, fan_in_fan_out=True,
                            target_modules=[HF_LAYERS[target] for target in lora.targets], task_type="CAUSAL_LM",
                            base_model_name_or_path=str(base_path))
    folder.mkdir()
    config.save_pretrained(str(folder))
    weights = {}
    for name, tensor in saved_weights(model).items():  # blocks.<i>.<layer>.lora_<A|B>.weight
        _, index, rest = name.split(".", 2)
        layer, matrix = rest.split(".lora_")
        weights[f"base_model.model.transformer.h.{index}.{HF_LAYERS[layer]}.lora_{matrix}"] = tensor.contiguous()
    save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
