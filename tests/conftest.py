"""Shared fixtures: an isolated token cache and offline W&B for every test, a Hydra
compose helper, and a runner for the real ``python -m`` entrypoints."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CONF_DIR, SAMPLE_TEXT, TINY, run_folders
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gpt2exp.cli.parallel_jobs import usable_cores
from gpt2exp.cli.schema import register_configs

# Fixtures both lanes use, kept beside their helpers.
pytest_plugins = ["helpers.bad_input", "helpers.hf_bridge", "helpers.hub_upload", "helpers.reuse",
                  "helpers.tracking"]


def pytest_addoption(parser):
    parser.addoption("--run-tutorial", action="store_true",
                     help="run the tutorial-curve check (about 22 minutes on 2 CPU cores; not in CI)")


def pytest_configure(config):
    """Under pytest-xdist each worker, and each run it starts, gets its share of the CPU cores as
    PyTorch threads: two workers of two threads each on two cores spin against each other
    (OpenMP waits busily), which made two concurrent training runs 2.2x slower than one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, usable_cores() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-tutorial"):
        return
    skip = pytest.mark.skip(reason="the tutorial-curve check runs with --run-tutorial")
    for item in items:
        if "tutorial" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GPT2EXP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "token-cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # An in-process wandb.init exports its service's address; a subprocess that inherited it would
    # share this process's W&B service (and, after a kill -9, find its run id still "in use").
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(SAMPLE_TEXT, encoding="utf-8")
    return path


def _composer(config_name: str, *base_overrides: str):
    register_configs()

    def _compose(*overrides: str, hydra: bool = False) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=[*base_overrides, *overrides],
                           return_hydra_config=hydra)

    return _compose


@pytest.fixture
def compose_train():
    """Compose conf/train.yaml with overrides, as the entrypoint would (`hydra=True`: with the
    `hydra` node: launcher, sweeper, run and sweep dirs)."""
    return _composer("train")


@pytest.fixture
def compose_generate():
    """Compose conf/generate.yaml (with ``ckpt=x.pt``) and overrides, as the entrypoint would."""
    return _composer("generate", "ckpt=x.pt")


# A run that takes seconds: a tiny model on a small text file, no W&B.
@pytest.fixture
def run_module(tmp_path):
    """Run ``python -m <module> <args>`` in a fresh folder; returns the CompletedProcess."""

    def _run(module: str, *args: str, cwd: Path = tmp_path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return _run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A real tiny training run (``python -m gpt2exp.train``, 4 steps, no W&B), made once per session;
    its folder is shared: read it, or take ``train_run`` (a copy) to write beside it."""
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT, encoding="utf-8")
    env = dict(os.environ, GPT2EXP_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "token-cache"))
    result = subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", *TINY, "data=text", f"data.path={corpus}", "trainer.max_steps=4",
         "trainer.eval_freq=2", "logger=none"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(root)
    return run_dir


@pytest.fixture
def train_run(trained_run, tmp_path) -> Path:
    """A training run's folder, as ``python -m gpt2exp.train`` leaves it (a tiny model, 4 steps),
    copied to ``tmp_path/outputs/<date>/<time>`` with its hard links (``last.pt``) kept."""
    run_dir = tmp_path / trained_run.relative_to(trained_run.parents[2])
    copied: dict[int, Path] = {}

    def copy_keeping_links(src: str, dst: str) -> None:
        inode = os.stat(src).st_ino
        if inode in copied:
            os.link(copied[inode], dst)
        else:
            shutil.copy2(src, dst)
            copied[inode] = Path(dst)

    shutil.copytree(trained_run, run_dir, copy_function=copy_keeping_links)
    return run_dir
