"""LoRA fine-tuning (`model.lora`): only the adapters train, checkpoints hold them and the base's
identity, and generate, eval, resume and export work on a LoRA run as on any run."""
import pytest
import torch
from helpers.lora import RANK

from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import LoraConfig, ModelConfig, TrainConfig
from gpt2exp.errors import UserError
from gpt2exp.modeling.lora import apply_lora, saved_weights
from gpt2exp.modeling.model import GPTModel
from gpt2exp.training.optimizers import make_optimizer


def tiny_lora_model(**lora) -> GPTModel:
    cfg = ModelConfig(context_length=16, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0, init="base",
                      lora=LoraConfig(rank=RANK, **lora))
    return apply_lora(GPTModel(cfg), {"init": "base", "sha256": "0" * 64})


def test_only_the_adapters_reach_the_optimizer_and_the_base_stays_bit_for_bit():
    torch.manual_seed(0)
    model = tiny_lora_model()
    base = {name: t.clone() for name, t in model.state_dict().items() if ".lora_" not in name}
    adapter = {name: t.clone() for name, t in saved_weights(model).items()}
    optimizer = make_optimizer(model, TrainConfig(model=model.cfg).optimizer)
    in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
    assert sum(p.numel() for p in in_optimizer) == sum(t.numel() for t in adapter.values())
    assert len(adapter) == 2 * 4 * 2  # A and B, 4 layers, 2 blocks
    tokens = torch.randint(0, 50257, (4, 17))
    for _ in range(3):
        model(tokens[:, :-1], targets=tokens[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in base.items())
    assert any(not torch.equal(saved_weights(model)[name], tensor) for name, tensor in adapter.items())


@pytest.mark.parametrize(("override", "message"), [
    ("model.lora.rank=-1", "model.lora.rank=-1 is not allowed"),
    ("model.lora.alpha=0", "model.lora.alpha=0.0 is not allowed"),
    ("model.lora.dropout=1", "model.lora.dropout=1.0 is not allowed"),
    ("model.lora.targets=[]", "model.lora.targets=[] is not allowed"),
    ("model.lora.rank=8", "model.lora.rank=8 is not allowed: needs model.init="),
])
def test_a_bad_lora_key_is_named(compose_train, override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cli.typed(compose_train(override), TrainConfig)
