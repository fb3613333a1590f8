"""The one front door: ``gpt2exp --help`` lists the commands, ``gpt2exp <command> ...`` runs one,
and ``gpt2exp <command> --help`` shows every key with its meaning (config.py's comment), its
default as the command composes it and its allowed values."""
import subprocess
from dataclasses import dataclass, fields, is_dataclass

import pytest
from helpers.console import BIN, run

from gpt2exp.cli import front_door
from gpt2exp.cli.help import field_meanings, keys, keys_help
from gpt2exp.cli.schema import SCHEMAS


def leaf_fields(schema: type) -> list[tuple[str, str]]:
    """(dataclass name, field name) of every key of `schema`, its sections' keys included."""
    found = []
    for item in fields(schema):
        if is_dataclass(item.type):
            found += leaf_fields(item.type)
        else:
            found.append((schema.__name__, item.name))
    return found


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_every_key_of_every_command_has_a_meaning_in_config_py(schema):
    missing = [f"{owner}.{name}" for owner, name in leaf_fields(schema) if not field_meanings()[(owner, name)]]
    assert not missing, "fields without a # comment in gpt2exp/config.py (the --help text): " + ", ".join(missing)


def test_a_field_without_a_comment_shows_no_meaning():
    @dataclass
    class Uncommented:
        size: int = 3

    [key] = keys(Uncommented, {})
    assert key.meaning == "" and key.default == "null"


def test_keys_show_the_composed_defaults_their_choices_and_meanings(compose_generate):
    text = keys_help("generate", compose_generate("decoding=nucleus"))
    lines = text.splitlines()
    for key in ("ckpt=x.pt", "prompt_file=null", "interactive=false", "decoding.top_p=0.9", "plot_temperatures=[1.0,0.3,1.5]",
                "logger.mode=auto  (one of: auto, online, offline, disabled)"):
        assert f"  {key}" in lines, key
    meaning = lines[lines.index("  decoding.temperature=1.0") + 1]
    assert meaning.strip() == "0 is greedy"  # DecodingConfig's default is 0.0; the nucleus preset sets 1.0


def test_the_front_door_lists_the_six_commands_and_refuses_another(capsys):
    front_door.main(["--help"])
    listed = [line.split()[0] for line in capsys.readouterr().out.split("commands:\n")[1].splitlines() if
              line.startswith("  ")]
    assert listed == ["train", "generate", "eval", "export", "compare", "bench"]
    with pytest.raises(SystemExit) as stopped:
        front_door.main(["nope"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("error: gpt2exp nope: no such command; the commands: train, generate, eval, "
                                       "export, compare, bench (gpt2exp --help)\n")


def test_gpt2exp_command_help_lists_groups_and_keys_and_writes_nothing(tmp_path):
    result = run("gpt2exp", "generate", "decoding=greedy", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("gpt2exp generate: sample continuations of prompts from a trained checkpoint\n")
    assert "  decoding: greedy*, nucleus, sample\n" in out and "  ckpt=<required>\n" in out
    assert "  decoding.temperature=0.0\n      0 is greedy\n" in out
    assert "  prompt_file=null\n      a UTF-8 file of prompts, one per line" in out
    assert not list(tmp_path.iterdir())


def test_help_into_a_reader_that_went_away_ends_without_a_traceback(tmp_path):
    """`gpt2exp-train --help | head -1`: head has gone before the help is printed."""
    process = subprocess.Popen([str(BIN / "gpt2exp-train"), "--help"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader leaves before Hydra has composed the help
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 1 and "Traceback" not in stderr, stderr
