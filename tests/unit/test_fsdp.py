"""`trainer.strategy=fsdp` in-process, on a process group of one rank (gloo; NCCL on a GPU; FSDP2
shards over it as over many): a sharded run's checkpoint is the one a single process writes (weights, AdamW's
state), loads back into a sharded optimizer, and the whole model it gathers computes the same
logits; what fsdp cannot do stops in one line. (Two ranks through torchrun: tests/e2e/test_distributed.py.)"""

import copy

import pytest
import torch
import torch.distributed as dist
from helpers import requires_cuda

from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import ModelConfig, TrainConfig
from gpt2exp.devices import Precision
from gpt2exp.errors import UserError
from gpt2exp.modeling.model import GPTModel
from gpt2exp.training import distributed
from gpt2exp.training.fsdp import Sharded, is_sharded, load_optimizer_state, shard
from gpt2exp.training.run import RunContext, plan_run


def one_rank(tmp_path, backend: str) -> None:
    """A process group of one rank, for this test only (destroyed by the caller)."""
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)


def tiny_model(device: str) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(ModelConfig.from_dict({"vocab_size": 50257, "context_length": 16, "emb_dim": 16, "n_heads": 2,
                                           "n_layers": 2, "drop_rate": 0.0})).to(device)


def train_two_steps(model: GPTModel, optimizer: torch.optim.Optimizer, device: str) -> None:
    batches = torch.randint(0, 50257, (2, 3, 16), generator=torch.Generator().manual_seed(1)).to(device)
    for tokens in batches:
        model(tokens, targets=tokens).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_a_sharded_runs_checkpoint_is_a_single_process_one_and_loads_back(tmp_path):
    one_rank(tmp_path, "gloo")
    try:
        check_the_checkpoint_round_trip("cpu")
    finally:
        dist.destroy_process_group()


@requires_cuda
def test_a_sharded_runs_checkpoint_on_a_gpu_is_a_single_process_one_and_loads_back(tmp_path):
    one_rank(tmp_path, "nccl")
    try:
        check_the_checkpoint_round_trip("cuda")
    finally:
        dist.destroy_process_group()


def check_the_checkpoint_round_trip(device: str) -> None:
    plain = tiny_model(device)
    model = shard(copy.deepcopy(plain), Precision("fp32", device))
    assert is_sharded(model) and not is_sharded(plain)
    sharded = Sharded(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    train_two_steps(model, sharded.optimizer, device)
    train_two_steps(plain, plain_optimizer, device)

    weights, saved = sharded.weights(), sharded.optimizer_state()
    assert weights.keys() == plain.state_dict().keys()
    assert weights["out_head.weight"] is weights["tok_emb.weight"]  # tied, saved once
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(weights[name], tensor.cpu())
    reference = plain_optimizer.state_dict()
    assert saved["param_groups"] == reference["param_groups"]
    for number, state in reference["state"].items():
        torch.testing.assert_close(saved["state"][number], {key: value.cpu() for key, value in state.items()})
    torch.optim.AdamW(tiny_model(device).parameters(), lr=1e-2).load_state_dict(saved)  # what a ddp resume does

    resumed = shard(tiny_model(device), Precision("fp32", device))
    optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    load_optimizer_state(optimizer, saved)
    reloaded = Sharded(resumed, optimizer).optimizer_state()
    for number, state in saved["state"].items():
        torch.testing.assert_close(reloaded["state"][number], state)

    whole = sharded.whole_model()
    assert isinstance(whole, GPTModel) and not is_sharded(whole)
    assert whole.out_head.weight is whole.tok_emb.weight  # tied, as the model it copies: no second embedding
    tokens = torch.arange(16, device=device)[None]
    with torch.no_grad():
        torch.testing.assert_close(whole(tokens), plain(tokens))


def test_fsdp_with_one_process_stops_in_one_line(compose_train, text_file, tmp_path):
    cfg = cli.typed(compose_train("data=text", f"data.path={text_file}", "trainer.strategy=fsdp"), TrainConfig)
    with pytest.raises(UserError, match=r"^trainer.strategy=fsdp shards the model over the processes of a torchrun "
                                        r"job, and this is one process: launch it with torchrun"):
        plan_run(cfg, RunContext(tmp_path / "run", tmp_path, resume_command="python -m gpt2exp.train"))
    assert not (tmp_path / "run").exists()


def test_fsdp_refuses_lora_in_one_line(compose_train, text_file, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, world_size=2))
    cfg = cli.typed(compose_train("data=text", f"data.path={text_file}", "trainer.strategy=fsdp",
                                  "model.init=base.pt", "model.lora.rank=4"), TrainConfig)
    with pytest.raises(UserError, match=r"^model.lora.rank=4 with trainer.strategy=fsdp: .* use trainer.strategy=ddp$"):
        plan_run(cfg, RunContext(tmp_path / "run", tmp_path, resume_command="python -m gpt2exp.train"))
