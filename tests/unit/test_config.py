"""Every preset composes; wrong types, unknown keys, wrong choices and out-of-range values are refused."""

import io
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from gpt2exp.cli import entrypoint as cli
from gpt2exp.cli.entrypoint import typed
from gpt2exp.cli.schema import SCHEMAS
from gpt2exp.config import (
    DataConfig,
    DecodingConfig,
    GenerateConfig,
    LoggerConfig,
    Mlp,
    ModelConfig,
    OptimizerConfig,
    TrainConfig,
    TrainerConfig,
    plain,
)
from gpt2exp.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "data", "optimizer", "decoding", "logger"])
def test_every_preset_composes_and_passes_checks(compose_train, group):
    presets = options(group)
    assert len(presets) >= 2, f"conf/{group} holds {presets}"  # a moved folder would check nothing
    for option in presets:
        cfg = compose_train(f"{group}={option}", "data.path=corpus.txt")
        typed(cfg, TrainConfig)  # raises UserError naming the key of a preset that fails its checks


def test_loader_reads_context_length_from_the_model(compose_train):
    cfg = typed(compose_train("model=small"), TrainConfig)
    assert cfg.model.context_length == 1024 and cfg.data.stride == 1024
    assert typed(compose_train("model.context_length=64"), TrainConfig).data.stride == 64


def test_wrong_type_fails_at_compose_time(compose_train):
    with pytest.raises(Exception) as info:
        compose_train("model.emb_dim=abc")
    assert isinstance(info.value.__cause__, ValidationError)


def test_unknown_key_fails_at_compose_time(compose_train):
    with pytest.raises(Exception) as info:
        compose_train("model.n_head=4")
    assert isinstance(info.value.__cause__, ConfigAttributeError)


def test_appended_unknown_key_is_refused(compose_train):
    with pytest.raises(UserError, match=r"^model.n_head=4 is not allowed: unknown key"):
        typed(compose_train("+model.n_head=4"), TrainConfig)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.n_heads=5", "model.n_heads"),
        ("model.emb_dim=0", "model.emb_dim"),
        ("model.drop_rate=1.0", "model.drop_rate"),
        ("optimizer.lr=-1", "optimizer.lr"),
        ("optimizer.betas=[0.9,1.5]", "optimizer.betas"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.eval_freq=0", "trainer.eval_freq"),
        ("trainer.grad_clip=0", "trainer.grad_clip"),
        ("trainer.device=tpu", "trainer.device"),
        ("model.pad_vocab_to=0", "model.pad_vocab_to"),
        ("decoding.temperature=-0.5", "decoding.temperature"),
        ("decoding.top_k=0", "decoding.top_k"),
        ("decoding.top_k=50258", "decoding.top_k"),
        ("decoding.top_p=1.5", "decoding.top_p"),
    ],
)
def test_out_of_range_values_name_the_key(compose_train, override, key):
    cfg = compose_train(override)
    with pytest.raises(UserError) as info:
        typed(cfg, TrainConfig)
    message = str(info.value)
    assert message.startswith(key) and "\n" not in message


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("optimizer.schedule=step", "[constant, cosine, linear, wsd]"),
        ("trainer.precision=fp8", "[auto, fp32, bf16, fp16]"),
        ("data.sampler=shuffled", "[windows, random]"),
        ("logger.mode=sometimes", "[auto, online, offline, disabled]"),
        ("model.mlp=geglu", "[gelu, relu2, swiglu]"),
        ("trainer.strategy=zero3", "[ddp, fsdp]"),
    ],
)
def test_a_wrong_choice_fails_at_compose_time_naming_the_key_and_the_choices(compose_train, override, choices):
    with pytest.raises(Exception) as info:
        compose_train(override)
    assert isinstance(info.value.__cause__, ValidationError)
    message = cli.error_message(info.value)  # the line the entrypoint prints
    assert override.partition("=")[0] in message and choices in message and "\n" not in message


def test_a_run_records_its_choices_as_plain_strings(compose_train):
    """Checkpoints (read back with weights_only=True), W&B, json files and config hashes hold
    each choice as its string, as they did before choices were Enums."""
    cfg = typed(compose_train("model.mlp=swiglu", "logger=none"), TrainConfig)
    record = plain(cfg)
    assert (record["model"]["mlp"], record["trainer"]["precision"], record["logger"]["mode"]) == (
        "swiglu", "auto", "auto")
    assert type(record["model"]["mlp"]) is str and type(record["data"]["source"]) is str
    buffer = io.BytesIO()
    torch.save({"config": record}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["config"] == record
    assert cfg.model.mlp == "swiglu" and f"{cfg.model.mlp}" == "swiglu" and repr(cfg.model.mlp) == "'swiglu'"


def test_a_section_built_from_plain_strings_holds_its_choices():
    """A checkpoint's model config (plain strings) builds the same section as the command line."""
    model = ModelConfig.from_dict({"context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 1, "mlp": "relu2"})
    assert model.mlp is Mlp.relu2 and model.mlp_hidden_dim == 32
    with pytest.raises(UserError, match=r"^model.norm='batchnorm' is not allowed: one of layernorm, rmsnorm$"):
        ModelConfig(context_length=8, emb_dim=8, n_heads=2, n_layers=1, norm="batchnorm")


@pytest.mark.parametrize("option", options("decoding"))
def test_generate_composes_with_every_decoding_preset(compose_generate, option):
    cfg = compose_generate(f"decoding={option}")
    assert typed(cfg, GenerateConfig).decoding.num_samples == 3


@pytest.mark.parametrize(
    ("override", "key"),
    [("prompt=", "prompt"), ("device=tpu", "device"), ("plot_temperatures=[]", "plot_temperatures"),
     ("decoding.top_p=0", "decoding.top_p"), ("+decoding.top_n=3", "decoding.top_n")],
)
def test_generate_out_of_range_values_name_the_key(compose_generate, override, key):
    with pytest.raises(UserError, match=rf"^{key}="):
        typed(compose_generate(override), GenerateConfig)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig, "decoding": DecodingConfig,
            "logger": LoggerConfig}
NAMES_THE_OPTION = {"data.source", "data.name", "optimizer.name"}


def dataclass_defaults(schema: type) -> dict:
    from dataclasses import MISSING, fields

    return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(schema)
            if f.default is not MISSING or f.default_factory is not MISSING}


@pytest.mark.parametrize("group", sorted(SECTIONS))
def test_group_options_hold_only_what_they_change(group):
    """Each default lives in gpt2exp/config.py alone: no option restates one (besides the keys
    that name the option, e.g. data.source)."""
    defaults = dataclass_defaults(SECTIONS[group])
    for option in options(group):
        values = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml")) or {}
        restated = [key for key, value in values.items()
                    if f"{group}.{key}" not in NAMES_THE_OPTION and key in defaults and defaults[key] == value]
        assert not restated, f"{group}/{option}.yaml restates the defaults of {restated}"


@pytest.mark.parametrize("primary", sorted(name.removesuffix("_schema") for name in SCHEMAS))
def test_primary_configs_only_compose(primary):
    """train.yaml, generate.yaml, ... pick group options and Hydra settings; no values of their own."""
    assert set(OmegaConf.load(CONF / f"{primary}.yaml")) <= {"defaults", "hydra"}


def test_an_experiment_preset_in_the_working_folder_is_found_and_wins(compose_train, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "my_run.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: small\ntrainer:\n  max_steps: 7\n")
    (tmp_path / "experiments" / "article.yaml").write_text("# @package _global_\nseed: 5\n")
    cfg = typed(compose_train("experiment=my_run"), TrainConfig)
    assert (cfg.trainer.max_steps, cfg.model.emb_dim) == (7, 768)
    assert compose_train("experiment=article").seed == 5
    monkeypatch.chdir(tmp_path / "experiments")  # elsewhere: the shipped article preset
    assert compose_train("experiment=article", "data.path=a.txt").trainer.epochs == 10


def test_every_allowed_strategy_has_a_wrapper():
    from gpt2exp.config import STRATEGIES
    from gpt2exp.training.run import STRATEGIES as WRAPPERS

    assert set(WRAPPERS) == set(STRATEGIES)
    with pytest.raises(UserError, match="^trainer.strategy='zero3' is not allowed: one of ddp, fsdp"):
        TrainerConfig(strategy="zero3")
