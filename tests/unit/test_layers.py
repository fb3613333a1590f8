"""The package's layers as the README's code map states them: a module imports only its own layer
and the layers below it (function-local imports included), and no module-level import cycle."""

import ast
from pathlib import Path

import gpt2exp

PACKAGE = Path(gpt2exp.__file__).parent
LEAVES = ("config", "devices", "tokenizer", "atomic", "errors", "locks", "network", "cache", "collector")
LAYERS = ("modeling", "data", "evaluation", "runs", "training", "benchmarks", "cli")
COMMANDS = ("train", "generate", "eval", "export", "compare", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    """0 for the leaves (and the package itself), then the layer folders in order; the
    ``python -m gpt2exp.<command>`` modules (and ``python -m gpt2exp``) sit above the CLI."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    if parts[1] in LAYERS:
        return 1 + LAYERS.index(parts[1])
    if parts[1] in (*COMMANDS, "__main__") and len(parts) == 2:
        return 1 + len(LAYERS)
    assert parts[1] in LEAVES, f"{module} is in no layer: a leaf, a layer folder or a command module"
    return 0


def imported(path: Path, known: dict[str, Path], *, top_level_only: bool = False) -> set[str]:
    """The gpt2exp modules ``path`` imports (``from a import b`` counts ``a.b`` where b is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("gpt2exp")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt2exp"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def test_every_module_imports_only_its_own_layer_and_the_layers_below():
    known = modules()
    upward = [f"{name} imports {target}" for name, path in known.items()
              for target in imported(path, known) if layer(target) > layer(name)]
    assert not upward


def test_no_module_level_import_cycle():
    known = modules()
    graph = {name: imported(path, known, top_level_only=True) & known.keys() for name, path in known.items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        assert name not in stack, " -> ".join([*stack[stack.index(name):], name])
        if name in done:
            return
        for target in graph[name]:
            if not name.startswith(target + "."):  # a module may import its own package's __init__
                visit(target, [*stack, name])
        done.add(name)

    for name in graph:
        visit(name, [])


def test_the_layer_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "gpt2exp" / "modeling" / "upward.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from gpt2exp.training import trainer\n")
    known = {"gpt2exp.training.trainer": Path("trainer.py")}
    assert imported(module, known) == {"gpt2exp.training.trainer"}
    assert layer("gpt2exp.training.trainer") > layer("gpt2exp.modeling.upward")


def test_config_imports_neither_hydra_nor_omegaconf():
    tree = ast.parse((PACKAGE / "config.py").read_text(encoding="utf-8"))
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not roots & {"hydra", "omegaconf"}
