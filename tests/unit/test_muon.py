"""`optimizer=muon`: torch.optim.Muon for the blocks' weight matrices, AdamW for the rest; each
group's settings; one checkpoint holds both optimizers' state, so a resumed run is the run."""

from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL

from gpt2exp.cli.entrypoint import typed
from gpt2exp.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig, TrainerConfig
from gpt2exp.data import build_data
from gpt2exp.errors import UserError
from gpt2exp.modeling.checkpoint import load_checkpoint, save_checkpoint
from gpt2exp.modeling.model import GPTModel
from gpt2exp.training.optimizers import MuonAdamW, make_optimizer
from gpt2exp.training.trainer import Hooks, Trainer, TrainState

MUON = OptimizerConfig(name="muon", lr=3e-3, weight_decay=0.05, muon_lr=0.03, muon_weight_decay=0.01,
                       muon_momentum=0.9, schedule="constant", warmup_steps=0)
MODEL = ModelConfig(**{**TINY_MODEL, "tie_embeddings": False, "norm": "rmsnorm", "mlp": "relu2"})


def test_muon_takes_the_blocks_weight_matrices_and_adamw_the_rest():
    model = GPTModel(MODEL)
    optimizer = make_optimizer(model, MUON)
    names = {id(p): name for name, p in model.named_parameters()}
    groups = [(g["optimizer"], g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
              for g in optimizer.param_groups]
    assert groups == [
        ("muon", 0.03, 0.01, ["blocks.0.attn.out_proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.ff.fc.weight",
                              "blocks.0.ff.out_proj.weight"]),
        ("adamw", 3e-3, 0.05, ["out_head.weight", "pos_emb.weight", "tok_emb.weight"]),
        ("adamw", 3e-3, 0.0, sorted(n for n in names.values() if n.endswith("bias") or "norm" in n)),
    ]
    assert optimizer.muon.param_groups[0]["momentum"] == 0.9


def test_a_step_is_muons_on_the_matrices_and_adamws_on_the_rest():
    """The same gradients through torch.optim.Muon and AdamW, each on its own, move each
    parameter exactly as the pair does."""
    torch.manual_seed(0)
    model = GPTModel(MODEL)
    reference = GPTModel(MODEL)
    reference.load_state_dict(model.state_dict())
    inputs = torch.randint(0, 50257, (2, 32))
    for net in (model, reference):
        net(inputs[:, :-1], targets=inputs[:, 1:]).backward()
    make_optimizer(model, MUON).step()
    matrices = [reference.get_parameter(f"blocks.0.{name}.weight") for name in
                ("attn.qkv", "attn.out_proj", "ff.fc", "ff.out_proj")]
    rest = [p for p in reference.parameters() if all(p is not m for m in matrices)]
    torch.optim.Muon(matrices, lr=0.03, weight_decay=0.01, momentum=0.9).step()
    torch.optim.AdamW([{"params": [p for p in rest if p.dim() == 2], "weight_decay": 0.05},
                       {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                      lr=3e-3, betas=(0.9, 0.95), eps=1e-8).step()
    for (name, param), expected in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param, expected, msg=name, atol=1e-6, rtol=0)


def train(data, steps: int, *, model: GPTModel | None = None, optimizer=None, state=None) -> tuple:
    if model is None:
        torch.manual_seed(0)
        model = GPTModel(MODEL)
        optimizer = make_optimizer(model, MUON)
    losses = []

    class Record(Hooks):
        def on_step(self, step: int, metrics: dict) -> None:
            losses.append(metrics["train/batch_loss"])

    cfg = TrainerConfig(max_steps=steps, eval_freq=100, eval_iter=1, progress=False)
    state = Trainer(model, optimizer, data, cfg, Record(), device=torch.device("cpu"), state=state).fit()
    return model, optimizer, state, losses


def test_a_resumed_muon_run_is_the_uninterrupted_run(text_file: Path, tmp_path: Path):
    """Six steps straight, or three, a checkpoint (both optimizers' state) written and read back
    into a new model and optimizer, then three more: the same losses and weights, bit for bit."""
    data = build_data(DataConfig(source="text", path=str(text_file), batch_size=4, cache_dir=str(tmp_path / "c")),
                      context_length=32, seed=0)
    straight, _, _, straight_losses = train(data, 6)
    model, optimizer, state, losses = train(data, 3)
    saved = optimizer.state_dict()["state"].values()
    assert isinstance(optimizer, MuonAdamW) and sum("momentum_buffer" in s for s in saved) == 4  # Muon's
    assert sum("exp_avg" in s for s in saved) == 13 - 4  # AdamW's
    save_checkpoint(tmp_path / "step-3.pt", model=model.state_dict(), optimizer=optimizer.state_dict(), step=3,
                    config={}, extra={"train_state": state.to_dict()})
    checkpoint = load_checkpoint(tmp_path / "step-3.pt")
    resumed = GPTModel(MODEL)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = make_optimizer(resumed, MUON)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    resumed, _, _, more_losses = train(data, 6, model=resumed, optimizer=resumed_optimizer,
                                       state=TrainState.from_dict(checkpoint["extra"]["train_state"]))
    assert losses + more_losses == straight_losses
    for (name, param), expected in zip(resumed.named_parameters(), straight.parameters()):
        assert torch.equal(param, expected), name


def test_a_lora_run_with_muon_is_refused_in_one_line(compose_train):
    with pytest.raises(UserError, match=r"^model.lora.rank=4 is not allowed: needs optimizer=adamw \(optimizer=muon trains"):
        typed(compose_train("optimizer=muon", "model.init=gpt2", "model.lora.rank=4"), TrainConfig)
