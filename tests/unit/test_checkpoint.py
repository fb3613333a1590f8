import os
import pickle
import re

import pytest
import torch

from gpt2exp.errors import UserError
from gpt2exp.modeling.checkpoint import load_checkpoint, save_checkpoint
from gpt2exp.training.step_checkpoints import load_latest_checkpoint, save_step_checkpoint, step_checkpoints


def _trained_linear():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_model_and_optimizer(tmp_path):
    model, optimizer = _trained_linear()
    config = {"model": {"emb_dim": 4}, "optimizer": {"lr": 1e-3}, "tags": ["a"], "note": None}
    path = save_checkpoint(
        tmp_path / "checkpoints" / "last.pt",
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        step=7,
        config=config,
        extra={"tokens_seen": 512, "rng": torch.get_rng_state()},
    )
    assert os.listdir(path.parent) == ["last.pt"]

    ckpt = load_checkpoint(path)
    assert (ckpt["format"], ckpt["version"], ckpt["step"]) == ("gpt2exp-checkpoint", 1, 7)
    assert ckpt["config"] == config
    assert ckpt["extra"]["tokens_seen"] == 512
    assert torch.equal(ckpt["extra"]["rng"], torch.get_rng_state())
    restored = torch.nn.Linear(4, 3)
    restored.load_state_dict(ckpt["model"])
    assert torch.equal(restored.weight, model.weight)
    restored_optimizer = torch.optim.AdamW(restored.parameters())
    restored_optimizer.load_state_dict(ckpt["optimizer"])
    assert restored_optimizer.param_groups[0]["weight_decay"] == 0.1
    restored_exp_avg = restored_optimizer.state[restored.weight]["exp_avg"]
    assert torch.equal(restored_exp_avg, optimizer.state[model.weight]["exp_avg"])


def test_save_replaces_an_existing_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    for step in (1, 2):
        save_checkpoint(path, model={}, optimizer=None, step=step, config={})
    assert load_checkpoint(path)["step"] == 2
    assert os.listdir(tmp_path) == ["last.pt"]


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    model_state = torch.nn.Linear(4, 3).state_dict()
    path = save_checkpoint(
        tmp_path / "last.pt", model=model_state, optimizer=None, step=1, config={}
    )
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=re.escape(f"ckpt: '{path}' is corrupt or truncated")):
        load_checkpoint(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_foreign_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(4, 3).state_dict(), path)
    with pytest.raises(UserError, match=re.escape(f"ckpt: '{path}' is not a gpt2exp checkpoint")):
        load_checkpoint(path)


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plain_pickle_dump(obj, path):
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize("dump", [torch.save, _plain_pickle_dump], ids=["torch.save", "pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path, dump):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    dump({"format": "gpt2exp-checkpoint", "version": 1, "model": RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(UserError, match=re.escape(f"ckpt: '{path}' is not a gpt2exp checkpoint")):
        load_checkpoint(path)
    assert not marker.exists()


def _save_steps(folder, steps, keep_last=2):
    for step in steps:
        save_step_checkpoint(folder, step=step, keep_last=keep_last, model={"w": torch.full((2,), float(step))},
                             optimizer=None, config={})


def test_keep_last_keeps_the_newest_step_files_and_last_pt_is_the_newest(tmp_path):
    _save_steps(tmp_path, [5, 10, 15, 20], keep_last=2)
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step-00000015.pt", "step-00000020.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 20
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate", "flip_a_bit", "garbage"])
def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog, damage):
    _save_steps(tmp_path, [5, 10])
    newest = tmp_path / "step-00000010.pt"
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip_a_bit":
        offset = data.index(torch.full((2,), 10.0).numpy().tobytes())
        data[offset] ^= 1
    else:
        data = bytearray(os.urandom(len(data)))
    newest.write_bytes(bytes(data))
    path, checkpoint = load_latest_checkpoint(tmp_path)
    assert (path.name, checkpoint["step"]) == ("step-00000005.pt", 5)
    assert f"'{newest}' is" in caplog.text and "falling back" in caplog.text


def test_no_usable_checkpoint_gives_none(tmp_path):
    _save_steps(tmp_path, [5])
    (tmp_path / "step-00000005.pt").write_bytes(b"")
    assert load_latest_checkpoint(tmp_path) is None


def test_crafted_pickle_among_step_checkpoints_is_refused_without_running(tmp_path):
    _save_steps(tmp_path, [5])
    marker = tmp_path / "pwned"
    torch.save({"format": "gpt2exp-checkpoint", "version": 1, "model": RunsCodeWhenUnpickled(marker)},
               tmp_path / "step-00000010.pt")
    path, checkpoint = load_latest_checkpoint(tmp_path)
    assert checkpoint["step"] == 5 and not marker.exists()
