"""Timing on a shared machine: several functions timed in turn, medians reported."""

import statistics
import time
from collections.abc import Callable, Mapping

import torch


def time_interleaved(
    steps: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per call of each step, after ``warmup`` untimed calls of each.

    The steps take turns, the order reversed every round, so that a slow spell of a shared
    machine falls on all of them alike.
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            synchronize(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_first_call(step: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, waiting for the device: a first call's includes compiling."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start
