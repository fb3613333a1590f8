"""TensorBoard (`logger.tensorboard`): event files in `<run folder>/tensorboard` through
PyTorch's SummaryWriter: each metric as a scalar, the samples and the summary as text, the
config as text, images. `tensorboard --logdir outputs` shows every run below it."""

from __future__ import annotations

import json
from pathlib import Path

from gpt2exp.errors import UserError

INSTALL = "pip install 'gpt2exp[tensorboard]'"
SUFFIX = ".gpt2exp"  # ends the names of the event files gpt2exp writes: a resumed run deletes only those


def check_installed() -> None:
    """Raises UserError when the tensorboard package (which SummaryWriter needs) is missing."""
    try:
        import tensorboard  # noqa: F401 - only whether it imports
    except ImportError:
        raise UserError(f"logger.tensorboard=true needs the tensorboard package: {INSTALL}") from None


class TensorBoardEvents:
    """One run's event files; a `trackers.Backend`."""

    def __init__(self, folder: Path, *, config: dict):
        self.folder, self.config = folder, config
        self._writer = None
        self._summary: dict = {}

    @property
    def writer(self):
        """The SummaryWriter, made at the first write; it starts with the config."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder), filename_suffix=SUFFIX)
            self._writer.add_text("config", _code(json.dumps(self.config, indent=2, default=str)), 0)
        return self._writer

    def carry_over(self, metrics: list[dict], samples: list[dict]) -> None:
        """Deletes the event files gpt2exp wrote in the folder before, then logs the records again
        (not every reader honours `SummaryWriter(purge_step=...)`: `tensorboard --load_fast=false`
        would show both curves). Event files of other writers are left alone."""
        for old in self.folder.glob(f"events.out.tfevents.*{SUFFIX}"):
            old.unlink()
        for record in metrics:
            values = dict(record)
            self.log_metrics(values, values.pop("step"))
        for sample in samples:
            self.log_sample(sample)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_sample(self, sample: dict) -> None:
        """Under "samples" at its step: the text, then its decoding settings."""
        settings = ", ".join(f"{key}={value}" for key, value in sample["settings"].items())
        self.writer.add_text("samples", f"{_code(sample['text'])}\n\n{settings}", sample["step"])

    def log_image(self, key: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(key, pixels, step, dataformats="HWC")

    def summary(self, values: dict) -> None:
        self._summary = values

    def finish(self, exit_code: int) -> None:
        """Writes the summary (a table under "summary") and closes the files."""
        if self._summary:
            rows = "\n".join(f"| {key} | {value} |" for key, value in self._summary.items())
            self.writer.add_text("summary", f"| key | value |\n|---|---|\n{rows}", 0)
        if self._writer is not None:
            self._writer.close()


def _code(text: str) -> str:
    """`text` as a Markdown code block (TensorBoard renders text as Markdown)."""
    return "```\n" + text.replace("```", "` ` `") + "\n```"
