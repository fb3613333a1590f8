"""What a run's start-up skips: pydocs' documents kept in the cache instead of parsing the standard
library again (a changed library, or a corrupt cache, is parsed again); PyTorch's compiler stack
where a command only loads a trained model."""
import ast
import subprocess
import sys

import pytest

from gpt2exp.data import pydocs_documents

MODULE = '"""{} explains what this small module does for the people who read it."""\n'


@pytest.fixture
def library(tmp_path, monkeypatch):
    """A standard library of two modules, each parse counted in ``library.parses``."""
    root = tmp_path / "stdlib"
    root.mkdir()
    for name in ("alpha", "beta"):
        (root / f"{name}.py").write_text(MODULE.format(name.title()))
    monkeypatch.setattr("sysconfig.get_paths", lambda: {"stdlib": str(root)})
    parses, real_parse = [], ast.parse
    monkeypatch.setattr(ast, "parse", lambda source: parses.append(source) or real_parse(source))
    pydocs_documents.cache_clear()
    yield root, parses
    pydocs_documents.cache_clear()


def documents(cache_dir):
    pydocs_documents.cache_clear()
    return pydocs_documents(cache_dir)


def test_pydocs_documents_are_parsed_once_then_read_from_the_cache(library, tmp_path):
    root, parses = library
    first = documents(tmp_path / "cache")
    assert first == ("Alpha explains what this small module does for the people who read it.",
                     "Beta explains what this small module does for the people who read it.")
    assert len(parses) == 2
    assert documents(tmp_path / "cache") == first and len(parses) == 2
    assert documents(None) == first and len(parses) == 4  # without a cache: parsed
    (root / "beta.py").write_text(MODULE.format("Gamma"))
    assert documents(tmp_path / "cache")[1].startswith("Gamma") and len(parses) == 6


def test_a_corrupt_pydocs_cache_is_parsed_again_and_rewritten(library, tmp_path):
    _, parses = library
    first = documents(tmp_path)
    [kept] = tmp_path.glob("pydocs-documents-*.json")
    kept.write_text('{"documents": [1, 2')
    assert documents(tmp_path) == first and len(parses) == 4
    assert documents(tmp_path) == first and len(parses) == 4


LOAD = """
import sys
from pathlib import Path
from gpt2exp.modeling.trained import load_trained_model
model, _ = load_trained_model(Path(sys.argv[1]))
print(model.tok_emb.weight.sum().item(), "torch._dynamo" in sys.modules)
"""


def test_loading_a_trained_model_imports_no_compiler_stack(tmp_path):
    """generate, eval and export load a checkpoint and train nothing: torch._dynamo (1.5 s to
    import on some CPUs) stays out, as a meta-device build of the model would pull it in."""
    from gpt2exp.config import ModelConfig, plain
    from gpt2exp.modeling.checkpoint import save_checkpoint
    from gpt2exp.modeling.model import GPTModel

    cfg = ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False)
    weights = GPTModel(cfg).state_dict()
    path = save_checkpoint(tmp_path / "model.pt", model=weights, optimizer=None, step=1, config={"model": plain(cfg)})
    result = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    total, imported = result.stdout.split()
    assert float(total) == weights["tok_emb.weight"].sum().item() and imported == "False"
