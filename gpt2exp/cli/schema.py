"""What Hydra needs to compose a command's config: each command's typed config (`gpt2exp.config`)
as a schema in Hydra's ConfigStore, the experiment presets source (`presets`) and the
``${launch_time:...}`` resolver of the run-folder names."""

import datetime
import os

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from gpt2exp.cli import presets
from gpt2exp.config import BenchConfig, EvalConfig, ExportConfig, GenerateConfig, TrainConfig

SCHEMAS = {"train_schema": TrainConfig, "generate_schema": GenerateConfig, "bench_schema": BenchConfig,
           "eval_schema": EvalConfig, "export_schema": ExportConfig}


def launch_time(pattern: str) -> str:
    """``${launch_time:%H-%M}`` in run-folder names: when the job was launched, the same on every
    rank of a distributed job ($GPT2EXP_LAUNCH_TIME, set by `distributed.start`), else now."""
    shared = os.environ.get("GPT2EXP_LAUNCH_TIME")
    return (datetime.datetime.fromisoformat(shared) if shared else datetime.datetime.now()).strftime(pattern)


def register_configs() -> None:
    """The schemas in Hydra's ConfigStore, the experiments/ folders as the experiment group,
    and the launch_time resolver of the run-folder names."""
    for name, schema in SCHEMAS.items():
        ConfigStore.instance().store(name=name, node=schema)
    presets.register()
    OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True, replace=True)
