"""``gpt2exp <command> --help`` (and ``python -m gpt2exp.<command> --help``): every key of the
command's config with its meaning, its default and its allowed values, read from the config
dataclasses (`gpt2exp.config`), the one source: a field's meaning is its trailing ``# comment``
there (or, without one, the comment lines just above it), its allowed values its Enum's members,
and its default the value the command composes (the chosen group options' values; overrides
given before ``--help`` show too).

Hydra renders its help from the template in conf/hydra/help/gpt2exp.yaml, whose
``${gpt2exp_usage:...}`` and ``${gpt2exp_keys:...}`` are the resolvers registered here."""

import ast
import functools
import inspect
import io
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt2exp import config
from gpt2exp.cli.front_door import COMMANDS
from gpt2exp.cli.schema import SCHEMAS


@dataclass
class Key:
    """One key of a command's config, as its help shows it."""

    name: str  # dotted: decoding.temperature
    default: str  # as a command line writes it
    choices: list[str]  # the allowed values of an Enum key; empty for the others
    meaning: str


@functools.cache
def field_meanings() -> dict[tuple[str, str], str]:
    """(dataclass name, field name) -> the field's comment in gpt2exp/config.py ("" if none)."""
    source = inspect.getsource(config)
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    lines = source.splitlines()
    meanings = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                end = item.end_lineno or item.lineno
                trailing = [comments[n] for n in range(item.lineno, end + 1) if n in comments]
                above: list[str] = []
                line = item.lineno - 1
                while line in comments and lines[line - 1].lstrip().startswith("#"):
                    above.insert(0, comments[line])
                    line -= 1
                meanings[(node.name, item.target.id)] = " ".join(trailing or above)
    return meanings


def keys(schema: type, values: dict, prefix: str = "") -> Iterator[Key]:
    """Every leaf key of the dataclass `schema`, its default taken from `values` (the composed
    config as plain values) where it holds the key."""
    for item in fields(schema):
        value = values.get(item.name) if isinstance(values, dict) else None
        if isinstance(item.type, type) and is_dataclass(item.type):
            yield from keys(item.type, value if isinstance(value, dict) else {}, f"{prefix}{item.name}.")
            continue
        choices = [str(choice.value) for choice in item.type] if (
            isinstance(item.type, type) and issubclass(item.type, Enum)) else []
        yield Key(f"{prefix}{item.name}", _as_override(value), choices,
                  field_meanings().get((schema.__name__, item.name), ""))


def _as_override(value: Any) -> str:
    """A config value as a command line would write it (`???`: the key is required)."""
    if value == "???":
        return "<required>"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(_as_override, value)) + "]"
    if value == "":
        return "''"
    return str(value.value if isinstance(value, Enum) else value)


def keys_help(config_name: str, root: DictConfig) -> str:
    """The keys of the command whose primary config is `config_name`, as composed in `root`:
    ``key=default  (one of: ...)`` and its meaning on the next line, a blank line between sections."""
    schema = SCHEMAS[f"{config_name}_schema"]
    values = OmegaConf.to_container(root, resolve=False)
    assert isinstance(values, dict)
    lines: list[str] = []
    section = ""
    for key in keys(schema, values):
        if key.name.rpartition(".")[0] != section and lines:
            lines.append("")
        section = key.name.rpartition(".")[0]
        choices = f"  (one of: {', '.join(key.choices)})" if key.choices else ""
        lines += [f"  {key.name}={key.default}{choices}", f"      {key.meaning}"]
    return _literal("\n".join(lines))


def groups_help(root: DictConfig) -> str:
    """The command's config groups, ``group: option, option, ...`` with the one chosen marked (*)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    loader = GlobalHydra.instance().config_loader()
    lines = []
    for group, chosen in sorted(root.hydra.runtime.choices.items()):
        if "/" in group:  # hydra/... and the groups that options compose from
            continue
        options = loader.get_group_options(group, results_filter=ObjectType.CONFIG)
        shown = ", ".join(f"{option}*" if option == chosen else option for option in options)
        lines.append(f"  {group}: {shown}" + ("" if chosen else "  (none chosen)"))
    return _literal("\n".join(lines) or "  (none: keys only)")


def usage(config_name: str) -> str:
    """The help's first lines: how the command is called and what it does."""
    return _literal(f"gpt2exp {config_name}: {COMMANDS[config_name]}\n"
                    f"usage: gpt2exp {config_name} [group=option ...] [key=value ...]  "
                    f"(or: python -m gpt2exp.{config_name} ...)")


def _literal(text: str) -> str:
    """`text` as Hydra's help template (a `string.Template`) prints it."""
    return text.replace("$", "$$")


def register() -> None:
    """The help template's resolvers (see conf/hydra/help/gpt2exp.yaml)."""
    OmegaConf.register_new_resolver("gpt2exp_usage", usage, replace=True)
    OmegaConf.register_new_resolver("gpt2exp_groups", lambda _root_: groups_help(_root_), replace=True)
    OmegaConf.register_new_resolver("gpt2exp_keys", lambda name, _root_: keys_help(name, _root_), replace=True)
