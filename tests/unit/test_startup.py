"""What a run's start-up skips: pydocs' documents kept in the cache instead of parsing the standard
library again (a changed library, or a corrupt cache, is parsed again)."""
import ast

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
