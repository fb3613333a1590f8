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
import resource, sys
from pathlib import Path
from gpt2exp.errors import UserError
from gpt2exp.modeling.trained import load_trained_model
model, _ = load_trained_model(Path(sys.argv[1]))
try:
    load_trained_model(Path(sys.argv[2]))
except UserError as err:
    print(err, file=sys.stderr)
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(model.tok_emb.weight.sum().item(), "torch._dynamo" in sys.modules, peak_mib)
"""


def test_loading_a_trained_model_imports_no_compiler_stack_and_spends_no_memory_on_a_misfit(tmp_path):
    """generate, eval and export load a checkpoint and train nothing: torch._dynamo (1.5 s to
    import on some CPUs) stays out, as a meta-device build with PyTorch's random init would pull
    it in; a checkpoint whose weights do not fit its (1.6 B parameter) config is refused before
    the model is built."""
    from gpt2exp.config import ModelConfig, plain
    from gpt2exp.modeling.checkpoint import save_checkpoint
    from gpt2exp.modeling.model import GPTModel

    cfg = ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False)
    weights = GPTModel(cfg).state_dict()
    path = save_checkpoint(tmp_path / "model.pt", model=weights, optimizer=None, step=1, config={"model": plain(cfg)})
    huge = plain(ModelConfig(context_length=1024, emb_dim=4096, n_heads=64, n_layers=8))
    misfit = save_checkpoint(tmp_path / "misfit.pt", model=weights, optimizer=None, step=1, config={"model": huge})
    result = subprocess.run([sys.executable, "-c", LOAD, str(path), str(misfit)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    total, imported, peak_mib = result.stdout.split()
    assert float(total) == weights["tok_emb.weight"].sum().item() and imported == "False"
    assert "holds weights that do not fit its model config (first: " in result.stderr
    assert int(peak_mib) < 2048  # the misfit model's weights alone would take 6.4 GB


def test_an_unfilled_model_has_the_built_models_weights_and_ties(tmp_path):
    """`GPTModel.unfilled`: the names, shapes and tied head of ``GPTModel(cfg)``, on the meta
    device or in memory left for a state dict to fill, in every architecture."""
    import torch

    from gpt2exp.config import ModelConfig
    from gpt2exp.modeling.model import GPTModel

    for options in ({}, {"tie_embeddings": False, "norm": "rmsnorm", "pos_emb": "rope", "mlp": "swiglu",
                         "qk_norm": True, "bias": False, "weight_init": "torch_default", "zero_init_proj": True}):
        cfg = ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2, **options)
        built = GPTModel(cfg)
        for device in ("meta", "cpu"):
            model = GPTModel.unfilled(cfg, device)
            assert {n: t.shape for n, t in model.state_dict().items()} == {
                n: t.shape for n, t in built.state_dict().items()}
            assert {p.device.type for p in model.parameters()} == {device}
            assert (model.out_head.weight is model.tok_emb.weight) == cfg.tie_embeddings
        model.load_state_dict(built.state_dict())
        tokens = torch.randint(0, 100, (1, 8))
        assert torch.equal(model.eval()(tokens), built.eval()(tokens))
