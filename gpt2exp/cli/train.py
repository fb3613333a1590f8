"""``python -m gpt2exp.train``: compose a run from config and run it (see `gpt2exp.training.run`).

In a multirun, jobs whose training settings are identical (a decoding sweep) share one
trained model: the first trains it, the others reuse it and only sample (see `reuse`).
"""

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import cast

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gpt2exp import collector
from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import ModelConfig, TrainConfig
from gpt2exp.errors import UserError
from gpt2exp.runs.layout import RunLayout, init_checkpoint
from gpt2exp.training import reuse

log = logging.getLogger("gpt2exp.train")


def train(composed: DictConfig) -> float:
    """Train the configured model (or resume it, or reuse the sweep's identical one); returns
    the final validation loss (for sweepers)."""
    cfg = cli.typed(composed, TrainConfig)  # a refused value ends here, before torch is imported
    with collector.paused(freeze=True):  # a million objects, all living as long as the process
        import torch
        import torch._dynamo  # noqa: F401 (torch.optim's first call imports it; here it is frozen too)
        from tqdm.contrib.logging import logging_redirect_tqdm

        from gpt2exp.runs.tracking import NullTracker, Tracker
        from gpt2exp.training import distributed
        from gpt2exp.training.run import plan_run, reuse_trained_model, run_training

    hydra_cfg = HydraConfig.get()
    place = distributed.start()  # under torchrun: started by main already; a submitit task: here
    if "TORCHELASTIC_RUN_ID" in os.environ and hydra_cfg.mode == RunMode.MULTIRUN:
        raise UserError("a multirun (-m) under torchrun: launch the sweep without torchrun (hydra/launcher=slurm "
                        "runs each job on its own GPUs), or one torchrun per setting")
    if not place.main:  # warnings to the console alone (a submitit task: rank 0 owns the log file)
        root = logging.getLogger()
        root.setLevel(logging.WARNING)
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
    if cfg.model.init is not None:
        cfg.model = _hf_architecture(cfg.model, hydra_cfg)
    ctx = _run_context(hydra_cfg)
    torch.manual_seed(cfg.seed)
    plan = plan_run(cfg, ctx)
    options = cli.tracker_options(cfg.logger, hydra_cfg)
    wandb_run = plan.resume.checkpoint["extra"].get("wandb", {}) if plan.resume else {}
    if wandb_run.get("run_id"):  # continue that W&B run; offline, its group links the parts too
        options["group"] = options["group"] or wandb_run.get("group") or wandb_run["run_id"]

    tracker = Tracker(ctx.run_dir, config=plan.resolved, run_id=wandb_run.get("run_id"), **options) if (
        place.main) else NullTracker()
    with _model_slot(hydra_cfg, plan.resolved, ctx.run_dir) as slot, logging_redirect_tqdm(), tracker:
        if distributed.broadcast(bool(slot and slot.trained)):  # every rank follows rank 0's store entry
            summary = distributed.broadcast(
                reuse_trained_model(cfg, plan, slot.trained, ctx, tracker) if place.main else None)
        else:
            summary = run_training(cfg, plan, ctx, tracker, options["group"])
            if slot:
                summary["config_hash"] = slot.key
                slot.publish(checkpoint=RunLayout.last_checkpoint(ctx.run_dir),
                             metrics=ctx.run_dir / RunLayout.METRICS, loss_plot=ctx.run_dir / RunLayout.LOSS_PLOT,
                             summary=summary)
        tracker.summary(summary)
    return summary["final/val_loss"]


def _hf_architecture(model: ModelConfig, hydra_cfg) -> ModelConfig:
    """`model.init`: the model config of the HF folder's config.json, or of the gpt2exp
    checkpoint's (dropout off unless `model.drop_rate` was given on the command line; this run's
    `model.lora`), so that the run's config records it."""
    from gpt2exp.modeling.hf_format import find_hf_folder, hf_model_config, read_config, refuse_beyond_gpt2
    from gpt2exp.modeling.trained import checkpoint_architecture

    given = any(o.lstrip("+~").startswith("model.drop_rate=") for o in hydra_cfg.overrides.task)
    overrides = {"drop_rate": model.drop_rate if given else 0.0, "lora": model.lora}
    init = cast(str, model.init)  # only a run with model.init comes here
    if (checkpoint := init_checkpoint(init)) is not None:
        return checkpoint_architecture(checkpoint, **overrides)
    refuse_beyond_gpt2(model, "model.init: a Hugging Face GPT-2")
    folder = find_hf_folder(init)
    return hf_model_config(read_config(folder), source=folder / "config.json", init=str(folder.resolve()), **overrides)


def _run_context(hydra_cfg):
    """The run folder, where earlier runs are (the fixed part of the run-dir pattern), how to
    resume, and whether jobs run in parallel: their progress bars would overwrite each other,
    so the eval lines alone report progress."""
    from gpt2exp.training.distributed import launch_command
    from gpt2exp.training.resume import outputs_root, resume_command
    from gpt2exp.training.run import RunContext

    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    section = hydra_cfg.sweep if multirun else hydra_cfg.run
    pattern = OmegaConf.to_container(section, resolve=False)["dir"]
    launcher = hydra_cfg.launcher
    parallel = multirun and "joblib" in str(launcher.get("_target_", "")) and launcher.get("n_jobs", 1) != 1
    if parallel and hydra_cfg.job.num == 0:
        log.info("progress bars off: the jobs run in parallel (one line per evaluation instead)")
    command = resume_command(list(hydra_cfg.overrides.task), run_dir, launch_command())
    return RunContext(run_dir, outputs_root(pattern, run_dir, Path(hydra_cfg.runtime.cwd)), command,
                      multirun=multirun, progress=not parallel)


def _model_slot(hydra_cfg, resolved: dict, run_dir: Path):
    """In a multirun, the sweep's model store entry for this training config (rank 0's, in a
    distributed job); else nothing."""
    from gpt2exp.training import distributed

    if hydra_cfg.mode != RunMode.MULTIRUN or not distributed.world().main:
        return contextlib.nullcontext()
    owner = {"job": hydra_cfg.job.num, "run_dir": str(run_dir)}
    return reuse.claim(Path(hydra_cfg.sweep.dir) / ".trained", reuse.training_key(resolved), owner,
                       wait_minutes=resolved["trainer"]["reuse_wait_minutes"])


run_train = cli.hydra_command("train", train)


def main() -> None:
    """The ``gpt2exp-train`` console command (``python -m gpt2exp.train``, or under ``torchrun``:
    one process per device, rank 0 owning the run folder, the console and W&B)."""
    rank = _join_job()
    if rank:  # no file (.hydra/, the log) or info line of its own
        sys.argv += ["hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]",
                     "~hydra.job_logging.handlers.file", "hydra.job_logging.root.level=WARNING"]
    try:
        run_train()
    except Exception as err:
        if not rank:
            raise
        # Rank 0 speaks for the job (a rank that is gone ends the others' collectives here).
        cli.fail(f"rank {rank} stops: {type(err).__name__}: {cli.one_line(err)}", status=1)
    finally:
        if "gpt2exp.training.distributed" in sys.modules:  # imported by `train`, or to join a job here
            from gpt2exp.training import distributed

            distributed.stop()


def _join_job() -> int:
    """This process's rank: under torchrun (WORLD_SIZE above 1) it joins the job's process group
    here, before Hydra composes; a single process (rank 0) imports no torch until its config
    is checked, so that a refused override ends in a moment."""
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return 0
    from gpt2exp.training import distributed

    return distributed.start().rank


if __name__ == "__main__":
    main()
