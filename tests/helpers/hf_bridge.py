"""What the unit and end-to-end tests of hf bridge share."""

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2exp.config import ModelConfig
from gpt2exp.modeling.checkpoint import save_checkpoint
from gpt2exp.modeling.model import GPTModel

HF_TINY = {"vocab_size": 50257, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}


@pytest.fixture(params=["safetensors", "bin"])
def hf_folder(request, tmp_path):
    """A small random GPT2LMHeadModel saved as transformers saves it."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**HF_TINY)).eval()
    folder = tmp_path / f"hf-{request.param}"
    model.save_pretrained(folder, safe_serialization=request.param == "safetensors")
    return folder, model


def save_hf_folder(folder: Path, **config) -> GPT2LMHeadModel:
    """A small random GPT2LMHeadModel with `config` changed, saved as transformers saves it."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**HF_TINY | config)).eval()
    model.save_pretrained(folder)
    return model


def tiny_checkpoint(path: Path, **model) -> Path:
    """A checkpoint of the tests' tiny model, `model` changing its config."""
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_MODEL | model)
    save_checkpoint(path, model=GPTModel(cfg).state_dict(), optimizer=None, step=1, config={"model": asdict(cfg)})
    return path
