import torch
from helpers import TINY, read_jsonl

from gpt2exp.modeling.checkpoint import (
    load_checkpoint,
)


def test_best_pt_holds_the_weights_alone_of_the_best_val_loss_step_and_generate_loads_it(run_module, text_file,
                                                                                          tmp_path):
    # A learning rate that warms up far past what the model takes: the val loss is lowest at step
    # 2 of 4 by a wide margin (about 8 against 35) in fp32 and in bf16 alike (trainer.precision=auto
    # is bf16 on CPUs with native bf16 only; a plain overshoot at lr=0.1 held in bf16 alone).
    result = run_module("gpt2exp.train", *TINY, "data=text", f"data.path={text_file}", "logger=none",
                        "trainer.max_steps=4", "trainer.eval_freq=2", "trainer.checkpoint_freq=2", "trainer.keep_last=2",
                        "optimizer.lr=1.0", "optimizer.warmup_steps=4", "optimizer.schedule=constant",
                        "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    losses = {m["step"]: m["val/loss"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "val/loss" in m}
    assert min(losses, key=losses.get) == 2 and losses[2] < losses[4], losses
    checkpoints = tmp_path / "run" / "checkpoints"
    best, at_best, last = (load_checkpoint(checkpoints / name) for name in ("best.pt", "step-00000002.pt", "last.pt"))
    assert best["step"] == 2 and best["optimizer"] is None and at_best["optimizer"] is not None
    assert best["model"].keys() == at_best["model"].keys()
    assert all(torch.equal(best["model"][name], at_best["model"][name]) for name in at_best["model"])
    assert not all(torch.equal(best["model"][name], last["model"][name]) for name in last["model"])

    result = run_module("gpt2exp.generate", f"ckpt={checkpoints / 'best.pt'}", "logger=none",
                        "decoding.max_new_tokens=4", "hydra.run.dir=sampled")
    assert result.returncode == 0, result.stderr
    assert read_jsonl(tmp_path / "sampled" / "samples.jsonl")
