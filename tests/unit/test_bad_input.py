"""Bad input never costs a run: random overrides of every numeric and string key of the train
and generate entrypoints either pass every check or stop with one line naming the key, and leave
nothing behind."""
import typing
from dataclasses import fields, is_dataclass

import pytest
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

from gpt2exp.cli import entrypoint as cli
from gpt2exp.cli.generate import plan_generation
from gpt2exp.config import GenerateConfig, TrainConfig
from gpt2exp.errors import UserError
from gpt2exp.training.run import RunContext, plan_run


def scalar_keys(schema: type, prefix: str = "") -> list[str]:
    """Every int, float, str (optional or not) and list key of the schema, dotted."""
    keys = []
    for f in fields(schema):
        if is_dataclass(f.type):
            keys += scalar_keys(f.type, f"{prefix}{f.name}.")
        elif f.type is not bool and typing.Optional[bool] != f.type:  # noqa: UP045 - as the dataclasses spell it
            keys.append(f"{prefix}{f.name}")
    return keys


KEYS = scalar_keys(TrainConfig)


GENERATE_KEYS = scalar_keys(GenerateConfig)


def quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


VALUES = st.one_of(
    st.sampled_from(["-1", "0", "1", "3", "-0.5", "0.5", "1e300", "-1e300", "nan", "inf", "-inf",
                     str(10**30), str(2**63), "abc", "''", "null", "true", "[1,2]", "[]", "auto",
                     "'données/ü.txt'", "'  '", quoted("x" * 300), "'${nowhere}'"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).map(quoted),
)


def safe_for(key: str, value: str) -> str:
    """Keep a random token cache inside the test's folder."""
    if key != "data.cache_dir":
        return value
    return quoted("cache/" + value.strip("'").lstrip("/~").replace("..", "__"))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_override_passes_or_names_its_key_in_one_line(compose_train, base_overrides, tmp_path, monkeypatch,
                                                          key, value):
    monkeypatch.chdir(tmp_path)
    override = f"{key}={safe_for(key, value)}"
    try:
        plan_run(cli.typed(compose_train(*base_overrides, override), TrainConfig),
                 RunContext(tmp_path / "run", tmp_path, resume_command="python -m gpt2exp.train"))
    except (UserError, HydraException, OmegaConfBaseException) as err:  # what the entrypoint reports
        message = cli.error_message(err)
        assert "\n" not in message and key in message, (override, message)
    assert not list(tmp_path.rglob("*.pt"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(GENERATE_KEYS), value=VALUES)
def test_any_generate_override_passes_or_names_its_key_in_one_line(compose_generate, trained_run, train_run, tmp_path,
                                                                   monkeypatch, key, value):
    monkeypatch.chdir(tmp_path)
    override = f"{key}={value}"
    try:
        plan_generation(compose_generate(f"ckpt={train_run}", "logger=none", override))
    except (UserError, HydraException, OmegaConfBaseException) as err:  # what the entrypoint reports
        message = cli.error_message(err)
        assert "\n" not in message and key in message, (override, message)
    assert sorted(tmp_path.rglob("*.pt")) == sorted(train_run / p.relative_to(trained_run) for p in trained_run.rglob("*.pt"))


def test_every_key_is_covered():
    assert {"model.emb_dim", "optimizer.lr", "data.path", "trainer.resume", "trainer.keep_last", "seed"} <= set(KEYS)
    assert {"ckpt", "prompt", "decoding.temperature", "decoding.top_k", "decoding.top_p"} <= set(GENERATE_KEYS)


def test_a_line_break_in_a_value_is_shown_escaped_and_the_message_stays_one_line(compose_train, base_overrides,
                                                                                 tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        plan_run(cli.typed(compose_train(*base_overrides, "trainer.resume='a\nb\u2028c'"), TrainConfig),
                 RunContext(tmp_path / "run", tmp_path, resume_command="python -m gpt2exp.train"))
    assert cli.error_message(info.value) == "trainer.resume: no such run folder 'a\\nb\\u2028c'"
