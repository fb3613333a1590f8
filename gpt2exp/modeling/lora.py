"""LoRA adapters (`model.lora`) through Hugging Face peft on GPTModel's own Linear layers:
added, saved, loaded, merged, and written as a PEFT folder beside their base. (Reading the
base a LoRA checkpoint names: `gpt2exp.modeling.trained`.)

peft is imported where it is used: its import takes seconds, and only LoRA runs need it.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import save_file
from torch import nn

from gpt2exp.atomic import folder_atomic
from gpt2exp.config import LoraConfig, ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.modeling.hf_format import HF_LAYERS, write_hf_folder
from gpt2exp.modeling.model import GPTModel

ADAPTER = "default"  # peft's adapter name; the saved weights leave it out


def weights_sha256(weights: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of a state dict's names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().data)
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
    layers = block_layers(GPTModel.unfilled(cfg))
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
    peft_config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft: int; a float scales as well
                                 lora_dropout=lora.dropout, target_modules=rf"blocks\.\d+\.({targets})")
    model = cast(GPTModel, inject_adapter_in_model(peft_config, model, adapter_name=ADAPTER))
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


@torch.no_grad()
def merged_model(model: GPTModel) -> GPTModel:
    """A plain GPTModel whose weights are the LoRA model's base plus its adapters' product
    (`model` itself is left as it is)."""
    from peft.tuners.lora import LoraLayer

    weights = {name.replace(".base_layer.", "."): tensor.clone() for name, tensor in model.state_dict().items()
               if ".lora_" not in name}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            weights[f"{name}.weight"] += module.get_delta_weight(ADAPTER)  # type: ignore[attr-defined]  # peft declares it on LoraLayer's subclasses (ours: lora.Linear)
    merged = GPTModel.unfilled(replace(model.cfg, lora=LoraConfig()), next(model.parameters()).device)
    merged.load_state_dict(weights)
    return merged.train(model.training)


def base_model(model: GPTModel) -> GPTModel:
    """A plain GPTModel holding the LoRA model's base weights alone."""
    weights = {name.replace(".base_layer.", "."): tensor for name, tensor in model.state_dict().items()
               if ".lora_" not in name}
    base = GPTModel.unfilled(replace(model.cfg, lora=LoraConfig()), "cpu")
    base.load_state_dict(weights)
    return base


def write_base_and_adapter(model: GPTModel, out: Path, readme: str | None = None) -> Path:
    """`out` (absent or an empty folder) as `base/`, the base as a Hugging Face GPT-2 folder, and
    `adapter/`, the adapter as a PEFT folder (``PeftModel.from_pretrained(GPT2LMHeadModel...,
    out / "adapter")``), and `readme` (a model card) as README.md; written into a hidden sibling
    renamed to `out` at the end, so a failed write leaves nothing (nor the parent folders it made)."""
    with folder_atomic(out) as staging:
        write_hf_folder(base_model(model), staging / "base")
        _write_peft_adapter(model, staging / "adapter", base_path=(out / "base").resolve())
        if readme is not None:
            (staging / "README.md").write_text(readme, encoding="utf-8")
    return out


def _write_peft_adapter(model: GPTModel, folder: Path, base_path: Path) -> None:
    """adapter_config.json and adapter_model.safetensors as peft saves a LoRA adapter of
    transformers' GPT2LMHeadModel: its layer names, Conv1D layers (fan_in_fan_out)."""
    from peft import LoraConfig as PeftLoraConfig

    lora = model.cfg.lora
    config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft: int; a float scales as well
                            lora_dropout=lora.dropout, fan_in_fan_out=True,
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
