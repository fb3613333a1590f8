"""Bad input never costs a run: random overrides of every numeric and string key of the train
and generate entrypoints either pass every check or stop with one line naming the key, and leave
nothing behind."""

import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
from helpers import TINY, run_folders
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

from gpt2exp.cli import entrypoint as cli
from gpt2exp.cli.generate import plan_generation
from gpt2exp.config import GenerateConfig, TrainConfig
from gpt2exp.errors import UserError
from gpt2exp.training.resume import find_resume_point
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


@pytest.fixture
def base_overrides(text_file):
    return [*TINY, "data=text", f"data.path={text_file}", "logger=none", "trainer.max_steps=2"]


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


def write_empty(path: Path) -> str:
    path.write_text("")
    return f"data.path={path}"


def write_binary(path: Path) -> str:
    path.write_bytes(bytes(range(256)) * 8)
    return f"data.path={path}"


def wikitext_without_valid(path: Path) -> str:
    path.mkdir()
    (path / "wiki.train.tokens").write_text("= Title =\n" + "Some words of an article . " * 200)
    return f"data.local_dir={path}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_override", "key", "message"),
    [
        (lambda p: "trainer.resume='/nowhere/données'", "trainer.resume", "no such run folder '/nowhere/données'"),
        (lambda p: "logger.name='${nowhere}'", "logger.name", "Interpolation key 'nowhere' not found"),
        (lambda p: f"model.emb_dim={10**6}", "model.emb_dim", "parameters need"),
        (lambda p: write_empty(p / "empty.txt"), "data.path", "holds no text"),
        (lambda p: write_binary(p / "binary.txt"), "data.path", "is not UTF-8 text"),
        (lambda p: wikitext_without_valid(p / "wikitext"), "data.local_dir",
         "wikitext' (it needs the official WikiText files: wiki.train.tokens and wiki.valid.tokens, "
         "or wiki.train.raw and wiki.valid.raw)"),
    ],
    ids=["non-ascii-resume-path", "bad-interpolation", "huge-model", "empty-text", "binary-text",
         "wikitext-missing-split"],
)
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(run_module, base_overrides, tmp_path, make_override,
                                                           key, message):
    override = make_override(tmp_path)
    data = ["data=wikitext2"] if key == "data.local_dir" else []
    result = run_module("gpt2exp.train", *base_overrides, *data, override)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and key in line and message in line, line
    assert not run_folders(tmp_path) and not list(tmp_path.rglob("*.pt"))
    assert find_resume_point("auto", {}, run_dir=tmp_path / "next", root=tmp_path / "outputs") is None


@pytest.mark.slow
def test_a_model_too_deep_to_build_is_refused_before_it_is_built(run_module, base_overrides, tmp_path):
    # 300,000 blocks of 2 dimensions pass the memory check (22M parameters) but take hours to build.
    result = run_module("gpt2exp.train", *base_overrides, "model.n_layers=300000", "model.emb_dim=2")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: model.n_layers=300000 is not allowed: must be in [1, 1024]"
    assert not run_folders(tmp_path)
