"""The learning-rate schedules (`optimizer.schedule`): a factor of each group's learning rate per step."""

import math

from gpt2exp.config import OptimizerConfig


def lr_multiplier(step: int, total_steps: int, cfg: OptimizerConfig) -> float:
    """The factor of step `step` (0-based) of `total_steps`: a linear warmup to 1 over
    `cfg.warmup_steps`, then by `cfg.schedule`: constant at 1; cosine or linear from 1 to
    `cfg.min_lr_ratio` at ``total_steps``; wsd (warmup-stable-decay) at 1, then linear to
    `cfg.min_lr_ratio` over the last `cfg.decay_fraction` of ``total_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    decay_start = total_steps * (1 - cfg.decay_fraction) if cfg.schedule == "wsd" else cfg.warmup_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
    if cfg.schedule == "cosine":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - (1 - cfg.min_lr_ratio) * progress
