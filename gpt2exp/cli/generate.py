"""``python -m gpt2exp.generate ckpt=<checkpoint or run folder> prompt="..."``: sample from a
trained checkpoint, log the samples, the figures that compare decoding settings and the
temperature plot. The prompts: ``prompt``, the lines of ``prompt_file`` (decoded together), or,
with ``interactive=true``, each line typed on stdin while the model stays loaded."""

import contextlib
import io
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gpt2exp import collector
from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import GenerateConfig, plain
from gpt2exp.devices import resolve_device
from gpt2exp.errors import UserError
from gpt2exp.runs.layout import LAST_CHECKPOINT, RunLayout, checkpoint_file
from gpt2exp.runs.plots import plot_next_token_probs
from gpt2exp.runs.trackers.wandb_run import resolve_mode
from gpt2exp.runs.tracking import Tracker
from gpt2exp.tokenizer import get_encoding

if TYPE_CHECKING:
    import torch

    from gpt2exp.modeling.model import GPTModel

log = logging.getLogger("gpt2exp.generate")


def wandb_checkpoint(ckpt: str, mode: str) -> Path:
    """The checkpoint file of a W&B model artifact, ``wandb:<entity>/<project>/<name>:<alias>``
    (as `logger.log_model` logs them), downloaded into W&B's artifact cache."""
    name = ckpt.removeprefix("wandb:")
    if resolve_mode(mode) != "online":
        raise UserError(f"ckpt={ckpt}: W&B is not reachable from here (logging offline); run "
                        f"`wandb artifact get {name}` where it is, then pass the file as ckpt=<file>")
    import wandb

    try:
        folder = Path(wandb.Api().artifact(name, type="model").download())
    except (wandb.errors.Error, ValueError) as err:
        raise UserError(f"ckpt={ckpt}: {cli.one_line(err)}") from None
    files = sorted(folder.glob("*.pt"))
    if len(files) != 1:
        raise UserError(f"ckpt={ckpt}: the artifact holds {len(files)} .pt files, not one")
    return files[0]


@dataclass
class GenerationPlan:
    """What a generate run needs once every check has passed."""

    cfg: GenerateConfig
    ckpt_path: Path
    checkpoint: dict
    model: "GPTModel"
    device: "torch.device"
    prompts: list[str] = field(default_factory=list)  # none when interactive: stdin gives them


def plan_generation(composed: DictConfig) -> GenerationPlan:
    """Check everything a user can get wrong (config, checkpoint, decoding against the model)
    before a file is written; raises UserError (or a config error). torch is imported once the
    config and the checkpoint's path have passed."""
    if OmegaConf.is_missing(composed, "ckpt"):
        newest = _newest_run(Path("outputs"))
        raise UserError("ckpt is required: ckpt=<checkpoint file or run folder>"
                        + (f"; the newest run here is ckpt={newest}" if newest else ""))
    cfg = cli.typed(composed, GenerateConfig)
    prompts = read_prompt_file(cfg.prompt_file) if cfg.prompt_file else [cfg.prompt] if cfg.prompt else []
    ckpt_path = wandb_checkpoint(cfg.ckpt, cfg.logger.mode) if cfg.ckpt.startswith("wandb:") else (
        checkpoint_file(cfg.ckpt))
    with collector.paused(freeze=True):  # torch and the model code: objects that live as long as the process
        from gpt2exp.modeling.trained import load_trained_model

    model, checkpoint = load_trained_model(ckpt_path)
    cfg.decoding.check_vocab(model.cfg.vocab_size)
    return GenerationPlan(cfg, ckpt_path, checkpoint, model, resolve_device(cfg.device, key="device"), prompts)


def read_prompt_file(path: str) -> list[str]:
    """The prompts of a prompt file: its lines without their line ends, blank lines skipped (and
    a UTF-8 byte-order mark); raises UserError naming the file if there are none to read."""
    try:
        text = Path(path).expanduser().read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"prompt_file={path!r}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"prompt_file={path!r} is a folder: give a file of prompts, one per line") from None
    except OSError as err:
        raise UserError(f"prompt_file={path!r}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"prompt_file={path!r} is not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}); "
                        "save it as UTF-8") from None
    prompts = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not prompts:
        raise UserError(f"prompt_file={path!r} holds no prompt: write one per line")
    return prompts


def _newest_run(outputs: Path) -> Path | None:
    """The run folder under `outputs` whose last.pt was written last, if any."""
    runs = []
    for last in outputs.glob(f"**/{RunLayout.CHECKPOINTS}/{LAST_CHECKPOINT}"):
        with contextlib.suppress(OSError):
            runs.append((last.stat().st_mtime, last.parent.parent))
    return max(runs)[1] if runs else None


class SampleLog:
    """The samples of one generate run, prompt after prompt: each prompt's continuations drawn
    (`decoding.sample_prompts`), printed and logged as they come; their gen/* figures at the end."""

    def __init__(self, model: "GPTModel", cfg: GenerateConfig, tracker: Tracker):
        self.model, self.decoding, self.batch_size, self.tracker = model, cfg.decoding, cfg.batch_size, tracker
        self.encoding = get_encoding()
        self.prompt_ids: list[list[int]] = []
        self.new_tokens: list[list[int]] = []
        self.logprobs: list[list[float]] = []
        self.seconds = 0.0

    def add(self, prompts: list[str]) -> None:
        """Sample each of `prompts` (together) and log them; with several, a line names each prompt."""
        from gpt2exp.modeling.decoding import sample_prompts

        context_length = self.model.cfg.context_length
        prompt_ids = [self.encoding.encode(prompt, allowed_special="all") for prompt in prompts]
        for number, ids in enumerate(prompt_ids, 1):
            if len(ids) > context_length:
                log.warning("prompt%s: %d tokens; the model sees only the last context_length=%d",
                            f" {number}" if len(prompts) > 1 else "", len(ids), context_length)
        out, seconds = sample_prompts(self.model, prompt_ids, self.decoding, batch_size=self.batch_size)
        per_prompt, settings = len(out.token_ids) // len(prompts), self.decoding.settings()
        for row, token_ids in enumerate(out.token_ids):
            prompt, sample = prompts[row // per_prompt], row % per_prompt
            if len(prompts) > 1 and sample == 0:
                log.info("prompt %d of %d: %s", row // per_prompt + 1, len(prompts), prompt)
            text = self.encoding.decode(token_ids)
            self.tracker.log_sample(step=0, prompt=prompt, text=text, settings={**settings, "sample": sample})
            log.info("sample %d: %s", sample, text)
        self.prompt_ids += prompt_ids
        self.new_tokens += out.new_tokens
        self.logprobs += out.logprobs
        self.seconds += seconds

    def converse(self, lines: Iterable[str]) -> None:
        """Sample each line as it comes, until the lines end or Ctrl-C."""
        try:
            for line in lines:
                self.add([line])
        except KeyboardInterrupt:
            log.info("interrupted: the session ends")

    @property
    def count(self) -> int:
        return len(self.new_tokens)


def typed_prompts() -> Iterator[str]:
    """The lines typed on stdin, each after a "> " on a terminal (where `input` edits them), blank
    ones skipped, until the end of input (a line that is not UTF-8 is skipped with a warning)."""
    cast(io.TextIOWrapper, sys.stdin).reconfigure(errors="surrogateescape")
    terminal = sys.stdin.isatty()
    while True:
        try:
            line = input("> " if terminal else "")
        except (EOFError, KeyboardInterrupt) as end:
            if terminal:
                print()  # the next line starts after the "> "
            if isinstance(end, KeyboardInterrupt):
                raise
            return
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            log.warning("stdin: a line that is not UTF-8 text was skipped")
            continue
        if line.strip():
            yield line


def generate_samples(composed: DictConfig) -> None:
    """Sample ``decoding.num_samples`` continuations of each prompt and log them."""
    plan = plan_generation(composed)
    import torch

    from gpt2exp.modeling.inference_layout import to_inference_layout
    from gpt2exp.modeling.text_metrics import generation_metrics

    cfg, device, dec = plan.cfg, plan.device, plan.cfg.decoding
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    model = to_inference_layout(plan.model.to(device).eval(), settings=cfg.inference)
    context_length = model.cfg.context_length

    settings = dec.settings()
    log.info("checkpoint %s (step %s) on %s | %s", plan.ckpt_path, plan.checkpoint["step"], device, settings)
    if dec.greedy and dec.num_samples > 1:
        log.info("decoding.temperature=0 is greedy: its %d samples would be the same text, so one is made",
                 dec.num_samples)

    with Tracker(run_dir, config=plain(cfg), job_type="generate", **cli.tracker_options(cfg.logger)) as tracker:
        samples = SampleLog(model, cfg, tracker)
        if cfg.interactive:
            log.info("interactive: type a prompt per line; end of input (Ctrl-D) or Ctrl-C ends the session")
            samples.converse(typed_prompts())
        else:
            samples.add(plan.prompts)
        if not samples.count:
            log.info("no prompt given: nothing sampled")
            return
        metrics = generation_metrics(samples.new_tokens, samples.logprobs, samples.seconds)
        tracker.log_metrics(metrics, step=0)
        tracker.summary(metrics)
        log.info(" | ".join(f"{key} {value:.4g}" for key, value in metrics.items()))

        with torch.inference_mode():
            first_prompt = samples.prompt_ids[0][-context_length:]
            logits = model(torch.tensor([first_prompt], device=device))[0, -1].float().cpu()
        plot_path = plot_next_token_probs(
            logits, label=lambda token_id: repr(samples.encoding.decode([token_id])),
            temperatures=list(cfg.plot_temperatures), temperature=dec.temperature, top_k=dec.top_k, top_p=dec.top_p,
            path=run_dir / RunLayout.NEXT_TOKEN_PLOT,
        )
        tracker.log_image("next_token_probs", plot_path, step=0)
    log.info("done: %d sample%s in %s", samples.count, "s" * (samples.count > 1), run_dir)


main = cli.hydra_command("generate", generate_samples)


if __name__ == "__main__":
    main()
