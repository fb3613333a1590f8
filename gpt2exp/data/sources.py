"""Corpora as train/val text: the standard library's docstrings, local text files, WikiText."""

import ast
import glob
import hashlib
import itertools
import json
import os
import re
import sysconfig
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from gpt2exp import collector
from gpt2exp.atomic import write_json_atomic
from gpt2exp.config import DataConfig
from gpt2exp.data.files import data_files
from gpt2exp.data.hub import data_path, eval_text
from gpt2exp.errors import UserError
from gpt2exp.network import unreachable
from gpt2exp.tokenizer import EOT_TOKEN

WIKITEXT_REPO = "Salesforce/wikitext"

# Folders of the standard library that hold tests, tools or third-party code, not library docs.
_SKIPPED_DIRS = {
    "__pycache__", "dist-packages", "idlelib", "lib2to3", "pydoc_data",
    "site-packages", "test", "tests", "turtledemo",
}
_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_MIN_WORDS = 8
_MIN_LETTER_SHARE = 0.75
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_NON_SPACE = re.compile(r"\S")
_BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Splits:
    """The training and validation text of one corpus."""

    train: str
    val: str


def load_splits(cfg: DataConfig, cache_dir: Path | None = None) -> Splits:
    """Return the train/val text of `cfg.source`.

    pydocs: the standard library's docstrings joined with "<|endoftext|>", split at the first
    document boundary past `train_ratio` of the characters. text: a file, a folder's *.txt
    files or a glob's files, blank lines dropped, split by characters at `train_ratio`.
    wikitext: config `name`'s train and validation splits, read from `local_dir` (the released
    files) or else the Hugging Face cache or hub. `cache_dir`: where pydocs keeps its documents.
    """
    if cfg.source == "pydocs":
        return _split_documents(pydocs_documents(cache_dir), cfg.train_ratio)
    if cfg.source == "text":
        return _split_characters(_read_text(data_path(cfg)), cfg.train_ratio)
    name = _wikitext_name(cfg)
    if cfg.local_dir:
        return _read_wikitext_folder(Path(cfg.local_dir).expanduser(), raw="raw" in name)
    return Splits(_wikitext_from_hugging_face(name, "train"), _wikitext_from_hugging_face(name, "validation"))


def whole_files(cfg: DataConfig) -> bool:
    """Whether `cfg` reads a person's own files, which have no splits (data=text, and data=hf on
    local files): an evaluation scores them whole, and a run has no test split of them."""
    return cfg.source == "text" or (cfg.source == "hf" and bool(data_files(data_path(cfg))))


def has_test_split(cfg: DataConfig) -> bool:
    """Whether the source has a held-out test split, which a run may score at its end: WikiText
    and Hugging Face hub datasets (their "test" split; `data=wikitext103` is one) have one;
    pydocs and whole files have none."""
    return cfg.source != "pydocs" and not whole_files(cfg)


def load_eval_text(cfg: DataConfig, *, split: str) -> str:
    """The text a held-out evaluation scores: WikiText's `split` (valid or test) from
    `local_dir` or the Hugging Face cache or hub; a hub dataset's split (see `hub.eval_text`);
    whole files (see `whole_files`); pydocs' val split."""
    if cfg.source == "hf":
        return eval_text(cfg, split)
    if cfg.source == "text":
        return _read_text(data_path(cfg))
    if cfg.source == "pydocs":
        if split == "test":
            raise UserError("eval.split=test: data=pydocs has no test split (use eval.split=valid)")
        return load_splits(cfg).val
    name = _wikitext_name(cfg)
    if cfg.local_dir:
        folder = Path(cfg.local_dir).expanduser()
        suffixes = (".raw", ".tokens") if "raw" in name else (".tokens", ".raw")
        file = next((folder / f"wiki.{split}{s}" for s in suffixes if (folder / f"wiki.{split}{s}").is_file()), None)
        if file is None:
            raise UserError(f"data.local_dir: no wiki.{split}.tokens (or .raw) in {str(folder)!r}")
        return file.read_text(encoding="utf-8")
    return _wikitext_from_hugging_face(name, "validation" if split == "valid" else "test")


def _wikitext_name(cfg: DataConfig) -> str:
    """`data.name`, which DataConfig requires (one of the WikiText configs) of data=wikitext."""
    assert cfg.name is not None, cfg.source
    return cfg.name


@lru_cache(maxsize=1)
def pydocs_documents(cache_dir: Path | None = None) -> tuple[str, ...]:
    """English docstrings of the installed standard library, deduplicated, in file order.

    Files are parsed with `ast` (nothing is imported) in sorted order of their relative
    paths; the prose of each module, class and function docstring (paragraphs unwrapped,
    code blocks dropped) that has at least 8 words and is mostly ASCII letters is one document.
    With a `cache_dir`, the documents are kept there as JSON, keyed by the library's files (their
    paths, sizes and times) and this module's code: a later run reads them instead of parsing.
    """
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in _SKIPPED_DIRS]
        relative_folder = Path(folder).relative_to(root)
        files += [(relative_folder / name).as_posix() for name in names if name.endswith(".py")]
    files.sort()
    kept = None if cache_dir is None else cache_dir / f"pydocs-documents-{_library_key(root, files)[:16]}.json"
    if kept is not None:
        with suppress(OSError, ValueError, AttributeError):  # none kept yet, or unreadable: parsed again
            documents = json.loads(kept.read_text(encoding="utf-8")).get("documents")
            if isinstance(documents, list) and all(isinstance(document, str) for document in documents):
                return tuple(documents)
    found: dict[str, None] = {}  # a dict keeps the first occurrence of each docstring, in order
    with collector.paused():  # millions of AST nodes, none of them garbage
        for relative_path in files:
            try:
                module = ast.parse(Path(root, relative_path).read_bytes())
            except (SyntaxError, ValueError):  # not Python 3 source, e.g. a leftover template
                continue
            for docstring in _docstrings(module):
                text = _prose(docstring)
                if _looks_like_prose(text):
                    found.setdefault(text)
    if not found:
        raise UserError(f"data=pydocs: no standard library sources in '{root}'; use data=text with data.path")
    if kept is not None:
        with suppress(OSError):  # the next run parses again
            write_json_atomic(kept, {"documents": list(found)})
    return tuple(found)


def _library_key(root: str, files: list[str]) -> str:
    """What pydocs' documents depend on: the library's files and the code that reads them."""
    stats = [(name, os.stat(os.path.join(root, name))) for name in files]
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    identity = [root, [(name, stat.st_size, stat.st_mtime_ns) for name, stat in stats], code]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def _docstrings(node):
    """Yield the docstrings of a module or definition and of the definitions inside it."""
    docstring = ast.get_docstring(node, clean=True)
    if docstring:
        yield docstring
    for child in node.body:
        if isinstance(child, _DEFINITIONS):
            yield from _docstrings(child)


def _prose(docstring: str) -> str:
    """The docstring's prose paragraphs, each unwrapped onto one line; indented blocks
    (code, examples) and doctest lines are dropped."""
    paragraphs = []
    for paragraph in _BLANK_LINES.split(docstring):
        lines = paragraph.splitlines()
        if lines and not any(line[:1].isspace() or line.startswith((">>>", "...")) for line in lines):
            paragraphs.append(" ".join(" ".join(lines).split()))
    return "\n".join(paragraphs)


def _looks_like_prose(text: str) -> bool:
    letters = len(_ASCII_LETTER.findall(text))
    non_space = len(_NON_SPACE.findall(text))
    return len(text.split()) >= _MIN_WORDS and letters >= _MIN_LETTER_SHARE * non_space


def _split_documents(documents: tuple[str, ...], train_ratio: float) -> Splits:
    """Join documents with the end-of-text separator and split at the document boundary
    where the train part first reaches `train_ratio` of the characters."""
    total = sum(map(len, documents))
    lengths_so_far = itertools.accumulate(map(len, documents))
    n_train = next(i for i, length in enumerate(lengths_so_far, 1) if length >= train_ratio * total)
    return Splits(EOT_TOKEN.join(documents[:n_train]), EOT_TOKEN.join(documents[n_train:]))


def _split_characters(text: str, train_ratio: float) -> Splits:
    split_index = int(train_ratio * len(text))
    return Splits(text[:split_index], text[split_index:])


def _read_text(path: str) -> str:
    """Read a UTF-8 file, all *.txt files of a folder or a glob's files; drop blank lines."""
    try:
        files = _text_files(path)
        texts = []
        for file in files:
            try:
                texts.append(file.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise UserError(f"data.path: {str(file)!r} is not UTF-8 text") from None
    except OSError as err:
        raise UserError(f"data.path: cannot read {str(path)!r} ({err.strerror})") from None
    text = "\n".join(line for line in "\n".join(texts).splitlines() if line.strip())
    if not text:
        raise UserError(f"data.path: {str(path)!r} holds no text (only blank lines)")
    return text


def _text_files(path: str) -> list[Path]:
    """The file, the folder's *.txt files or the glob's files that `path` names (at least one)."""
    given = Path(path).expanduser()
    if given.is_file():
        return [given]
    pattern = os.path.join(glob.escape(str(given)), "*.txt") if given.is_dir() else str(given)
    files = [Path(match) for match in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(match)]
    if not files:
        if given.is_dir():
            problem = "no *.txt files in folder"
        elif given.exists():
            problem = "not a regular file or folder (a device, pipe or socket):"
        else:
            problem = "no such file or folder:"
        raise UserError(f"data.path: {problem} {str(path)!r}")
    return files


def _read_wikitext_folder(folder: Path, *, raw: bool) -> Splits:
    """Read the released files: wiki.{train,valid}.tokens, or the .raw ones."""
    suffixes = (".raw", ".tokens") if raw else (".tokens", ".raw")
    suffix = next((s for s in suffixes if (folder / f"wiki.train{s}").is_file()), suffixes[0])
    train_file, val_file = folder / f"wiki.train{suffix}", folder / f"wiki.valid{suffix}"
    for file in (train_file, val_file):
        if not file.is_file():
            raise UserError(f"data.local_dir: no {file.name} in {str(folder)!r} (it needs the official WikiText files: "
                            "wiki.train.tokens and wiki.valid.tokens, or wiki.train.raw and wiki.valid.raw)")
    return Splits(train_file.read_text(encoding="utf-8"), val_file.read_text(encoding="utf-8"))


def _wikitext_from_hugging_face(name: str, split: str) -> str:
    """A WikiText config's split ("train", "validation" or "test"), its rows joined as released,
    from the Hugging Face hub's cache, else downloaded from the hub; fail in seconds when neither
    works."""
    import pyarrow.parquet as pq  # slow to import, and only this source needs it

    try:
        files = _wikitext_files(_wikitext_snapshot(name, cached=True), name, split)
    except LocalEntryNotFoundError:  # not in the cache
        files = []
    if not files:
        files = _wikitext_files(_download_wikitext(name), name, split)
    return "".join(text for file in files for text in pq.read_table(file, columns=["text"]).column("text").to_pylist())


def _wikitext_snapshot(name: str, *, cached: bool) -> str:
    """The folder of the config's files in the hub's cache (`cached`: without asking the hub;
    LocalEntryNotFoundError when they are not there), downloading them if need be."""
    return huggingface_hub.snapshot_download(WIKITEXT_REPO, repo_type="dataset", allow_patterns=[f"{name}/*"],
                                             local_files_only=cached)


def _wikitext_files(folder: str, name: str, split: str) -> list[Path]:
    """The parquet shards of `split` in a snapshot of the WikiText repository, in order."""
    return sorted(Path(folder, name).glob(f"{split}-*.parquet"))


def _download_wikitext(name: str) -> str:
    """Download the config's files when the hub answers; else fail with one line on what to do."""
    problem = "the hub cannot be reached"
    if _hub_reachable():
        try:
            return _wikitext_snapshot(name, cached=False)
        except (OSError, HfHubHTTPError) as error:
            problem = f"the download failed ({type(error).__name__}: {' '.join(str(error).split())})"
    raise UserError(
        f"data: WikiText {name!r} is not in the Hugging Face cache and {problem}; set data.local_dir "
        "to a folder with the official files (wiki.train.tokens, wiki.valid.tokens) or run once with network"
    )


def _hub_reachable(timeout_s: float = 5.0) -> bool:
    """Whether the hub answers at all (any HTTP status counts), honouring proxy settings."""
    return unreachable(huggingface_hub.constants.ENDPOINT, timeout_s) is None
