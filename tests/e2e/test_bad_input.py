"""Bad input never costs a run: random overrides of every numeric and string key of the train
and generate entrypoints either pass every check or stop with one line naming the key, and leave
nothing behind."""
from pathlib import Path

import pytest
from helpers import run_folders

from gpt2exp.training.resume import find_resume_point


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


def test_a_model_too_deep_to_build_is_refused_before_it_is_built(run_module, base_overrides, tmp_path):
    # 300,000 blocks of 2 dimensions pass the memory check (22M parameters) but take hours to build.
    result = run_module("gpt2exp.train", *base_overrides, "model.n_layers=300000", "model.emb_dim=2")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: model.n_layers=300000 is not allowed: must be in [1, 1024]"
    assert not run_folders(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "usage: python -m gpt2exp.export ckpt=<checkpoint file or run folder> out=<folder>"),
        (("ckpt=x.pt", "out=hf", "merge=false"), "Key 'merge' not in 'ExportConfig'"),
        (("ckpt=x.pt", "out=hf", "merge_lora=maybe"), "merge_lora=maybe: Value 'maybe' is not a valid bool"),
        (("ckpt=x.pt", "out=hf", "trainer.max_steps=3"), "Key 'trainer' not in 'ExportConfig'"),
        (("ckpt=x.pt", "out=hf"), "ckpt: 'x.pt' does not exist or is not a file"),
    ],
    ids=["nothing", "unknown-key", "not-a-bool", "another-commands-key", "no-such-checkpoint"],
)
def test_export_refuses_bad_arguments_in_one_line_and_writes_nothing(run_module, tmp_path, args, message):
    """export takes key=value arguments as the other commands do: typed, unknown keys named."""
    result = run_module("gpt2exp.export", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and message in result.stderr
    assert not list(tmp_path.iterdir())
