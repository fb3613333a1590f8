"""What a run writes in its folder, by name: the one place that spells them. Writers and readers
(training, the commands, the run folder's undo and clash check) name a run's files from here.

The model layer knows checkpoint files, not run folders: a command that accepts a run folder
where a checkpoint is meant resolves it here (`checkpoint_file`, `init_checkpoint`) and hands
the model layer the file.
"""

from __future__ import annotations

from pathlib import Path

from gpt2exp.errors import UserError

LAST_CHECKPOINT = "last.pt"  # in the run's checkpoint folder: the newest step checkpoint
BEST_CHECKPOINT = "best.pt"  # in the run's checkpoint folder: the weights at the lowest val loss


class RunLayout:
    """The entries a run of any command (Hydra included) writes at the top of its folder, besides
    its log file: the only names an undo removes, and those that make a folder no new run's."""

    HYDRA = ".hydra"
    CHECKPOINTS = "checkpoints"
    WANDB = "wandb"
    METRICS = "metrics.jsonl"
    METRICS_CSV = "metrics.csv"  # logger.csv
    TENSORBOARD = "tensorboard"  # logger.tensorboard: the event files
    SAMPLES = "samples.jsonl"
    SUMMARY = "summary.json"
    LOSS_PLOT = "loss.png"
    NEXT_TOKEN_PLOT = "next_token_probs.png"
    EVAL = "eval.json"
    BENCH = "bench.json"
    FAILURE = "failure.json"

    @classmethod
    def entries(cls) -> tuple[str, ...]:
        return tuple(value for name, value in vars(cls).items() if name.isupper())

    @classmethod
    def last_checkpoint(cls, run_dir: str | Path) -> Path:
        return Path(run_dir) / cls.CHECKPOINTS / LAST_CHECKPOINT

    @classmethod
    def best_checkpoint(cls, run_dir: str | Path) -> Path:
        return Path(run_dir) / cls.CHECKPOINTS / BEST_CHECKPOINT


def checkpoint_file(ckpt: str) -> Path:
    """`ckpt` as a checkpoint file: as given, or a run folder's last checkpoint."""
    path = Path(ckpt).expanduser()
    try:
        is_dir = path.is_dir()
    except OSError as err:  # e.g. a name too long for the file system
        raise UserError(f"ckpt: '{ckpt}' cannot be read ({err.strerror})") from None
    if is_dir:
        path = RunLayout.last_checkpoint(path)
        if not path.is_file():
            raise UserError(f"ckpt: run folder '{ckpt}' has no {RunLayout.CHECKPOINTS}/{LAST_CHECKPOINT}")
    return path


def init_checkpoint(init: str) -> Path | None:
    """The gpt2exp checkpoint file that `model.init` names (a file, or a run folder's last
    checkpoint), resolved; None when it names a Hugging Face folder (one holding config.json)
    or model instead."""
    path = Path(init).expanduser()
    if path.is_file():
        return path.resolve()
    last = RunLayout.last_checkpoint(path)
    if last.is_file() and not (path / "config.json").is_file():
        return last.resolve()
    return None
