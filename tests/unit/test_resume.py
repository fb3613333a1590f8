"""Which checkpoint `trainer.resume` picks, the epoch-seeded shuffle, and the training state."""

import os
from pathlib import Path

import pytest
import torch

from gpt2exp.data import EpochSampler, create_dataloader, epoch_batches
from gpt2exp.errors import UserError
from gpt2exp.training.resume import config_fingerprint, find_resume_point, outputs_root, resume_command
from gpt2exp.training.step_checkpoints import save_step_checkpoint
from gpt2exp.training.trainer import EvalPoint, TrainState

CONFIG = {"model": {"emb_dim": 32}, "optimizer": {"lr": 1e-3}, "trainer": {"resume": None, "progress": True},
          "logger": {"mode": "offline"}, "data": {"cache_dir": "~/.cache/gpt2exp", "batch_size": 4}, "seed": 1}


def make_run(root: Path, name: str, config: dict, steps=(4,), mtime: float | None = None) -> Path:
    run_dir = root / name
    for step in steps:
        path = save_step_checkpoint(
            run_dir / "checkpoints", step=step, keep_last=2, model={}, optimizer={}, config=config,
            extra={"train_state": TrainState(step=step).to_dict(), "rng": {}},
        )
        if mtime is not None:
            os.utime(path, (mtime + step, mtime + step))
    return run_dir


def with_changes(**sections) -> dict:
    return {**CONFIG, **{key: {**CONFIG[key], **value} for key, value in sections.items()}}


def test_fingerprint_ignores_resume_progress_logger_and_cache_dir_only():
    same = with_changes(trainer={"resume": "auto", "progress": False}, logger={"mode": "online"},
                        data={"cache_dir": "/elsewhere"})
    assert config_fingerprint(same) == config_fingerprint(CONFIG)
    assert config_fingerprint(with_changes(optimizer={"lr": 2e-3})) != config_fingerprint(CONFIG)


def test_outputs_root_is_the_fixed_part_of_the_run_dir_pattern(tmp_path):
    pattern = "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    assert outputs_root(pattern, tmp_path / "x", launch_dir=tmp_path) == tmp_path / "outputs"
    assert outputs_root("runs/exp-${now:%H}", tmp_path / "x", launch_dir=tmp_path) == tmp_path / "runs"
    assert outputs_root("/abs/${now:%H}", tmp_path / "x", launch_dir=tmp_path) == Path("/abs")
    assert outputs_root("fixed/run", tmp_path / "fixed" / "run", launch_dir=tmp_path) is None


def test_auto_in_a_fixed_folder_looks_in_that_folder_only(tmp_path):
    make_run(tmp_path, "sibling", CONFIG)
    assert find_resume_point("auto", CONFIG, run_dir=tmp_path / "new", root=None) is None
    own = make_run(tmp_path, "own", CONFIG, steps=(4, 8))
    assert find_resume_point("auto", CONFIG, run_dir=own, root=None).checkpoint["step"] == 8


HELD = b"model:\n  emb_dim: 32\ntrainer:\n  max_steps: 10\n  resume: auto\n"


@pytest.mark.parametrize(("now", "afresh"), [
    (HELD, True),
    (HELD.replace(b"max_steps: 10", b"max_steps: 20").replace(b"auto", b"null"), True),  # plan and ignored keys
    (HELD.replace(b"32", b"64"), False),
    (None, False),
])
def test_auto_starts_afresh_in_a_folder_without_checkpoints_only_for_the_same_config(tmp_path, now, afresh):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    args = ("auto", CONFIG)
    options = {"run_dir": tmp_path / "run", "root": None, "held_configs": (HELD, now)}
    if afresh:
        assert find_resume_point(*args, **options) is None
    else:
        with pytest.raises(UserError, match="holds a run with another config"):
            find_resume_point(*args, **options)


def test_auto_in_a_folder_whose_checkpoints_are_all_unusable_refuses(tmp_path):
    run_dir = make_run(tmp_path, "run", CONFIG)
    (run_dir / "checkpoints" / "step-00000004.pt").write_bytes(b"half a file")
    with pytest.raises(UserError, match="no usable checkpoint in"):
        find_resume_point("auto", CONFIG, run_dir=run_dir, root=None, held_configs=(HELD, HELD))


def test_auto_picks_the_newest_run_with_the_same_config(tmp_path):
    make_run(tmp_path, "old", CONFIG, steps=(4, 8), mtime=1000)
    newest = make_run(tmp_path, "new", CONFIG, steps=(4,), mtime=2000)
    make_run(tmp_path, "other", with_changes(optimizer={"lr": 2e-3}), mtime=3000)
    current = tmp_path / "current"
    point = find_resume_point("auto", CONFIG, run_dir=current, root=tmp_path)
    assert point.run_dir == newest and point.checkpoint["step"] == 4


def test_auto_prefers_the_run_folders_own_checkpoints(tmp_path):
    own = make_run(tmp_path, "own", CONFIG, mtime=1000)
    make_run(tmp_path, "newer", CONFIG, mtime=2000)
    assert find_resume_point("auto", CONFIG, run_dir=own, root=tmp_path).run_dir == own


def test_auto_starts_afresh_without_a_match(tmp_path):
    make_run(tmp_path, "other", with_changes(optimizer={"lr": 2e-3}))
    assert find_resume_point("auto", CONFIG, run_dir=tmp_path / "new", root=tmp_path) is None
    assert find_resume_point(None, CONFIG, run_dir=tmp_path / "new", root=tmp_path) is None


def test_auto_passes_over_a_dangling_checkpoint_link(tmp_path):
    good = make_run(tmp_path, "good", CONFIG)
    (tmp_path / "broken" / "checkpoints").mkdir(parents=True)
    (tmp_path / "broken" / "checkpoints" / "step-00000009.pt").symlink_to(tmp_path / "nowhere.pt")
    assert find_resume_point("auto", CONFIG, run_dir=tmp_path / "new", root=tmp_path).run_dir == good


def test_auto_skips_a_run_whose_only_checkpoint_is_corrupt(tmp_path):
    good = make_run(tmp_path, "good", CONFIG, mtime=1000)
    broken = make_run(tmp_path, "broken", CONFIG, mtime=2000)
    (broken / "checkpoints" / "step-00000004.pt").write_bytes(b"half a file")
    assert find_resume_point("auto", CONFIG, run_dir=tmp_path / "x", root=tmp_path).run_dir == good


def test_explicit_folder_accepts_the_run_or_its_checkpoints_folder(tmp_path):
    run_dir = make_run(tmp_path, "run", CONFIG, steps=(4, 8))
    for given in (run_dir, run_dir / "checkpoints"):
        point = find_resume_point(str(given), CONFIG, run_dir=tmp_path / "x", root=tmp_path)
        assert point.run_dir == run_dir and point.checkpoint["step"] == 8


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "trainer.resume: no such run folder"),
        ("empty", "trainer.resume: no usable checkpoint in"),
        ("other_model", "trainer.resume: model.emb_dim=32 differs from the checkpoint's 64"),
    ],
)
def test_explicit_folder_problems_name_the_key(tmp_path, setup, message):
    folder = tmp_path / "run"
    if setup == "empty":
        (folder / "checkpoints").mkdir(parents=True)
    elif setup == "other_model":
        make_run(tmp_path, "run", with_changes(model={"emb_dim": 64}))
    with pytest.raises(UserError, match=f"^{message}"):
        find_resume_point(str(folder), CONFIG, run_dir=tmp_path / "x", root=tmp_path)


def test_resume_command_replaces_an_earlier_resume():
    command = resume_command(["data=text", "trainer.resume=auto", "optimizer.lr=1e-3"], Path("outputs/a b"))
    assert command == "python -m gpt2exp.train data=text optimizer.lr=1e-3 'trainer.resume=outputs/a b'"


def test_train_state_survives_a_checkpoint(tmp_path):
    state = TrainState(step=7, epoch=1, batch_in_epoch=3, tokens_seen=896, best_val_loss=5.5, skipped_nonfinite=1,
                       history=[EvalPoint(step=4, epoch=0.5, tokens_seen=512, train_loss=6.0, val_loss=5.5)])
    torch.save(state.to_dict(), tmp_path / "state.pt")
    assert TrainState.from_dict(torch.load(tmp_path / "state.pt", weights_only=True)) == state


def test_epoch_order_is_fixed_by_seed_and_epoch():
    sampler = EpochSampler(50, shuffle=True, seed=3)
    assert sampler.order(0) == EpochSampler(50, shuffle=True, seed=3).order(0)
    assert sampler.order(0) != sampler.order(1)
    assert sorted(sampler.order(1)) == list(range(50))
    assert EpochSampler(5, shuffle=False, seed=3).order(2) == [0, 1, 2, 3, 4]


def test_epoch_batches_skip_to_a_position_inside_the_epoch():
    tokens = torch.arange(400).numpy()
    loader = create_dataloader(tokens, batch_size=4, context_length=8, stride=8, shuffle=True, drop_last=True,
                               seed=5)
    whole_epoch = [x for x, _ in epoch_batches(loader, epoch=2)]
    rest = [x for x, _ in epoch_batches(loader, epoch=2, skip_batches=3)]
    assert len(rest) == len(whole_epoch) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, whole_epoch[3:]))
    state = torch.get_rng_state()
    list(epoch_batches(loader, epoch=0))
    assert torch.equal(torch.get_rng_state(), state)


def test_a_hollow_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    run_dir = make_run(tmp_path, "run", CONFIG, steps=(4, 8))
    torch.save({"format": "gpt2exp-checkpoint", "version": 1}, run_dir / "checkpoints" / "step-00000012.pt")
    for resume in (str(run_dir), "auto"):
        point = find_resume_point(resume, CONFIG, run_dir=tmp_path / "new", root=tmp_path)
        assert point.checkpoint["step"] == 8
    hollow = {"format": "gpt2exp-checkpoint", "version": 1, "model": {}, "optimizer": None, "step": 9,
              "config": CONFIG, "extra": {}}
    torch.save(hollow, run_dir / "checkpoints" / "step-00000013.pt")
    assert find_resume_point(str(run_dir), CONFIG, run_dir=tmp_path / "new", root=tmp_path).checkpoint["step"] == 8
