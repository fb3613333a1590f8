"""Tests of gpt2exp.data: corpora, their token files and the sliding-window loaders."""
import io
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2exp.config import DataConfig
from gpt2exp.data import (
    SlidingWindowDataset,
    Splits,
    build_data,
    create_dataloader,
    eval_batches,
    files,
    load_eval_text,
    load_splits,
    pydocs_documents,
    sources,
    token_files,
)
from gpt2exp.data.hub import split_tokens
from gpt2exp.data.loaders import RandomOffsetSampler
from gpt2exp.data.token_files import text_source, token_file
from gpt2exp.errors import UserError
from gpt2exp.tokenizer import EOT_TOKEN, get_encoding

WIKITEXT_VALID = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"


STORY = "\n".join(f"Line {i} of a story about a fox who jumps over the lazy dog." for i in range(200))


def encode_whole(text):
    return get_encoding().encode(text, allowed_special={EOT_TOKEN})


def cached_tokens(text, cache_dir, label="story"):
    """The token file of `text` held whole, as a run of data=text/pydocs/wikitext reads it."""
    return token_file(text_source(text, label), Path(cache_dir))


def tokenize(text, piece_chars=files.PIECE_CHARS):
    """The ids the token file of `text` gets, its pieces cut past every `piece_chars` characters."""
    out = io.BytesIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "PIECE_CHARS", piece_chars)
        token_files.tokenize_pieces([list(text_source(text, "story").rows())], "", out, special=True)
    return np.frombuffer(out.getvalue(), dtype=np.uint16)


def test_windows_follow_the_tutorial_and_targets_are_shifted_by_one():
    tokens = np.arange(20, dtype=np.uint16)
    dataset = SlidingWindowDataset(tokens, context_length=4, stride=3)
    assert len(dataset) == len(range(0, 20 - 4, 3)) == 6
    inputs, targets = dataset[1]
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.tolist() == [3, 4, 5, 6]
    assert targets.tolist() == [4, 5, 6, 7]
    last_inputs, last_targets = dataset[-1]
    assert last_inputs.tolist() == [15, 16, 17, 18] and last_targets.tolist() == [16, 17, 18, 19]


def test_tutorial_example_gives_seven_batches():
    tokens = np.zeros(14_400, dtype=np.uint16)
    loader = create_dataloader(tokens, batch_size=2, context_length=1024, stride=1024, shuffle=True, drop_last=True)
    assert len(loader) == 7
    assert sum(1 for _ in loader) == 7


def first_tokens_in_order(seed):
    loader = create_dataloader(
        np.arange(400, dtype=np.uint16), batch_size=4, context_length=8, stride=8,
        shuffle=True, drop_last=False, seed=seed,
    )
    return [inputs[:, 0].tolist() for inputs, _ in loader]


def test_shuffle_is_reproducible_with_a_seed_and_changes_with_another():
    assert first_tokens_in_order(seed=1) == first_tokens_in_order(seed=1)
    assert first_tokens_in_order(seed=1) != first_tokens_in_order(seed=2)


def random_offset_batches(seed):
    loader = create_dataloader(
        np.arange(400, dtype=np.uint16), batch_size=4, context_length=8, stride=8,
        shuffle=True, drop_last=True, seed=seed, sampler="random",
    )
    return [(inputs.tolist(), targets.tolist()) for inputs, targets in loader]


def test_random_sampler_draws_windows_at_any_offset_reproducibly():
    batches = random_offset_batches(seed=1)
    assert len(batches) == len(range(0, 400 - 8, 8)) // 4  # as many windows per epoch as sliding ones
    starts = [row[0] for inputs, _ in batches for row in inputs]
    for inputs, targets in batches:
        for row, target in zip(inputs, targets):
            assert row == list(range(row[0], row[0] + 8)) and target == [t + 1 for t in row]
    assert any(start % 8 for start in starts) and max(starts) <= 400 - 9
    assert random_offset_batches(seed=1) == batches
    assert random_offset_batches(seed=2) != batches


def test_eval_batches_spread_evenly_and_are_fixed():
    dataset = SlidingWindowDataset(np.arange(1001, dtype=np.uint16), context_length=10, stride=10)  # 100 windows
    batches = eval_batches(dataset, num_batches=3, batch_size=2)
    assert [inputs.shape for inputs, _ in batches] == [torch.Size([2, 10])] * 3
    starts = [row[0] for inputs, _ in batches for row in inputs.tolist()]
    assert starts == [0, 200, 400, 590, 790, 990]  # first and last window, evenly in between
    again = eval_batches(dataset, num_batches=3, batch_size=2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))


def test_eval_batches_use_every_window_of_a_small_split():
    dataset = SlidingWindowDataset(np.arange(51, dtype=np.uint16), context_length=10, stride=10)  # 5 windows
    batches = eval_batches(dataset, num_batches=4, batch_size=2)
    assert [len(inputs) for inputs, _ in batches] == [2, 2, 1]


@pytest.mark.parametrize(
    "text",
    [
        "a b",
        "It's 's 'll  fine ",
        "x \n y  \n\n z\t w \n v\n u",
        "1 2 3. !? .  ",
        "caf\u00e9 \u20ac5 \U0001f600 \u00a0 \u3000x \u2028y \x1cz \x85w",
        f"word {EOT_TOKEN} next {EOT_TOKEN}  {EOT_TOKEN}\n {EOT_TOKEN}",
        " = Heading = \n \n The text , with <unk> tokens . \n",
    ],
)
def test_chunked_tokenizing_equals_encoding_the_whole_text(text):
    assert tokenize(text, piece_chars=1).tolist() == encode_whole(text)


PIECES = ["a", "B", "'", "s", "1", ".", "<", " ", "  ", "\n", "\t", "\r", "\u00a0", "\u3000", "\x1c", "\u00e9"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*PIECES, EOT_TOKEN])))
def test_chunked_tokenizing_equals_encoding_the_whole_text_for_any_mix(pieces):
    text = "".join(pieces)
    assert tokenize(text, piece_chars=1).tolist() == encode_whole(text)


@pytest.mark.skipif(not WIKITEXT_VALID.exists(), reason=f"{WIKITEXT_VALID} is not on this machine")
def test_chunked_tokenizing_equals_encoding_the_whole_wikitext_file(monkeypatch):
    text = WIKITEXT_VALID.read_text(encoding="utf-8")
    encoding = get_encoding()
    chunk_counts = []
    encode_batch = encoding.encode_batch

    def count_chunks(chunks, **kwargs):
        chunk_counts.append(len(chunks))
        return encode_batch(chunks, **kwargs)

    monkeypatch.setattr(encoding, "encode_batch", count_chunks)
    tokens = tokenize(text)
    assert chunk_counts[0] > 10  # really cut into chunks
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == encode_whole(text)


def test_cache_is_reused_without_tokenizing_again(tmp_path, monkeypatch):
    first = cached_tokens(STORY, cache_dir=tmp_path, label="story")
    assert isinstance(first, np.memmap) and first.dtype == np.uint16
    assert first.tolist() == encode_whole(STORY)
    assert [p.name for p in tmp_path.iterdir()] == [Path(first.filename).name]  # no temporary left

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again")

    encoding = get_encoding()
    monkeypatch.setattr(encoding, "encode_batch", fail)
    monkeypatch.setattr(encoding, "encode", fail)
    assert cached_tokens(STORY, cache_dir=tmp_path, label="story").tolist() == first.tolist()
    with pytest.raises(AssertionError, match="tokenized again"):
        cached_tokens(STORY + " More.", cache_dir=tmp_path, label="story")


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda path: path.write_bytes(path.read_bytes()[:-7]),  # truncated
        lambda path: path.write_bytes(b"not a token file"),
        lambda path: path.write_bytes(Path(cached_tokens("Another story.", path.parent).filename).read_bytes()),
    ],
)
def test_corrupt_cache_is_rebuilt(tmp_path, corrupt):
    path = Path(cached_tokens(STORY, cache_dir=tmp_path, label="story").filename)
    corrupt(path)
    assert cached_tokens(STORY, cache_dir=tmp_path, label="story").tolist() == encode_whole(STORY)
    assert np.fromfile(path, dtype=np.uint16, offset=token_files.HEADER_BYTES).tolist() == encode_whole(STORY)


# Two processes build the same cache entry at once: each tokenizes, then waits for the other
# before writing, so both writes overlap.
_RACE = """
import sys, time
from pathlib import Path
from gpt2exp.data import token_files
from gpt2exp.tokenizer import EOT_TOKEN, get_encoding
cache_dir, me, other, text = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]).read_text()
real_tokenize = token_files.tokenize_pieces
def tokenize_then_wait(*args, **kwargs):
    tokens = real_tokenize(*args, **kwargs)
    (cache_dir / f"ready-{me}").touch()
    while not (cache_dir / f"ready-{other}").exists():
        time.sleep(0.001)
    return tokens
token_files.tokenize_pieces = tokenize_then_wait
tokens = token_files.token_file(token_files.text_source(text, "story"), cache_dir)
print(tokens.tolist() == get_encoding().encode(text, allowed_special={EOT_TOKEN}))
"""


def test_two_processes_building_the_same_cache_both_succeed(tmp_path):
    text_path = tmp_path / "story.txt"
    text_path.write_text(STORY)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    processes = [
        subprocess.Popen([sys.executable, "-c", _RACE, str(cache_dir), me, other, str(text_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for me, other in (("a", "b"), ("b", "a"))
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [(p.returncode, out.strip()) for p, (out, _) in zip(processes, outputs)] == [(0, "True")] * 2, outputs
    [cache_file] = cache_dir.glob("*.bin")
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([cache_file.name, "ready-a", "ready-b"])
    assert cached_tokens(STORY, cache_dir=cache_dir, label="story").tolist() == encode_whole(STORY)


# A writer that stops while it writes the cache file: it says so, then sleeps until killed. With
# a pid given, it names its temporary file after that pid, as a writer in another pid namespace
# (another container on the same host) does: its pid means nothing here.
_STUCK_WRITER = """
import os, sys, time
from pathlib import Path
from gpt2exp.data import token_files
cache_dir, text = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
if len(sys.argv) > 3:
    os.getpid = lambda: int(sys.argv[3])
def tokenize_then_stop(*args, **kwargs):
    (cache_dir / "writing").touch()
    time.sleep(600)
token_files.tokenize_pieces = tokenize_then_stop
token_files.token_file(token_files.text_source(text, "story"), cache_dir)
"""


def start_stuck_writer(tmp_path, cache_dir, *pid):
    text_path = tmp_path / "story.txt"
    text_path.write_text(STORY)
    writer = subprocess.Popen([sys.executable, "-c", _STUCK_WRITER, str(cache_dir), str(text_path), *map(str, pid)])
    deadline = time.monotonic() + 120
    while not (cache_dir / "writing").exists():
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    [temporary] = cache_dir.glob(".story-*.tmp")
    return writer, temporary


def test_a_killed_writers_temporary_file_is_removed_and_never_read(tmp_path):
    cache_dir = tmp_path / "cache"
    writer, temporary = start_stuck_writer(tmp_path, cache_dir)
    writer.kill()
    writer.wait()
    temporary.write_bytes(b"gpt2exp token file\nhalf a header")
    assert cached_tokens(STORY, cache_dir=cache_dir, label="story").tolist() == encode_whole(STORY)
    assert not temporary.exists()
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(["writing", *(p.name for p in cache_dir.glob("*.bin"))])


def test_a_live_writers_temporary_file_is_kept_whatever_its_pid_says(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    cache_dir = tmp_path / "cache"
    writer, temporary = start_stuck_writer(tmp_path, cache_dir, int(finished.stdout))
    try:
        assert f".{finished.stdout.strip()}@" in temporary.name  # a pid of this host that no longer runs
        assert cached_tokens(STORY, cache_dir=cache_dir, label="story").tolist() == encode_whole(STORY)
        assert temporary.exists()
    finally:
        writer.kill()
        writer.wait()


def test_text_source_drops_blank_lines_and_splits_by_characters(tmp_path):
    (tmp_path / "story.txt").write_text("one two\n\n   \nthree four\n\nfive six\n", encoding="utf-8")
    splits = load_splits(DataConfig(source="text", path=str(tmp_path / "story.txt"), train_ratio=0.5))
    text = "one two\nthree four\nfive six"
    assert splits.train + splits.val == text
    assert len(splits.train) == int(0.5 * len(text))


def test_text_source_reads_a_folder_or_a_glob_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first file\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not text\n", encoding="utf-8")
    for path in (tmp_path, tmp_path / "*.txt"):
        splits = load_splits(DataConfig(source="text", path=str(path), train_ratio=0.5))
        assert splits.train + splits.val == "first file\nsecond file"


@pytest.mark.parametrize(
    "path, message",
    [
        (None, "data.path=None is not allowed: data=text needs one"),
        ("missing.txt", "data.path: no such file or folder: '{tmp}/missing.txt'"),
        ("*.nothing", "data.path: no such file or folder"),
        ("binary.txt", "data.path: '{tmp}/binary.txt' is not UTF-8 text"),
        ("blank.txt", "data.path: '{tmp}/blank.txt' holds no text"),
        ("empty_folder", "data.path: no *.txt files in folder"),
    ],
)
def test_text_source_errors_name_data_path(tmp_path, path, message):
    (tmp_path / "binary.txt").write_bytes(bytes([0x89, 0x50, 0x4E, 0x47, 0xFF, 0xFE]))
    (tmp_path / "blank.txt").write_text("\n  \n\n", encoding="utf-8")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(UserError) as error:
        load_splits(DataConfig(source="text", path=path and str(tmp_path / path)))
    assert message.format(tmp=tmp_path) in str(error.value)


@pytest.mark.parametrize("train_ratio", [0, 1, 1.5, -0.1])
def test_train_ratio_out_of_range(train_ratio):
    with pytest.raises(UserError, match=rf"data\.train_ratio={train_ratio} is not allowed: must be between 0 and 1"):
        load_splits(DataConfig(source="pydocs", train_ratio=train_ratio))


def test_unknown_source_lists_the_allowed_ones():
    with pytest.raises(UserError, match="data.source='wiki'.*pydocs, text, wikitext"):
        load_splits(DataConfig(source="wiki"))


def write_wikitext(folder, suffix, splits=("train", "valid", "test")):
    folder.mkdir()
    for split in splits:
        (folder / f"wiki.{split}{suffix}").write_text(f" = {split} = \n \n The {split} text . \n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("suffix", [".tokens", ".raw"])
def test_wikitext_reads_the_official_files_from_local_dir(tmp_path, suffix):
    folder = write_wikitext(tmp_path / "wikitext-2", suffix)
    splits = load_splits(DataConfig(source="wikitext", name="wikitext-2-raw-v1", local_dir=str(folder)))
    assert splits.train == " = train = \n \n The train text . \n"
    assert splits.val == " = valid = \n \n The valid text . \n"


@pytest.mark.parametrize("present, missing", [(("valid",), "wiki.train.tokens"), (("train",), "wiki.valid.tokens")])
def test_wikitext_local_dir_missing_a_split(tmp_path, present, missing):
    folder = write_wikitext(tmp_path / "wikitext-2", ".tokens", splits=present)
    with pytest.raises(UserError, match=f"data.local_dir: no {missing} in '{folder}'"):
        load_splits(DataConfig(source="wikitext", name="wikitext-2-v1", local_dir=str(folder)))


def test_wikitext_unknown_config_name():
    with pytest.raises(UserError, match="data.name='wikitext-3'.*wikitext-2-raw-v1"):
        load_splits(DataConfig(source="wikitext", name="wikitext-3"))


def test_wikitext_without_cache_or_hub_fails_fast_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    environment = dict(os.environ)
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        load_splits(DataConfig(source="wikitext", name="wikitext-2-raw-v1"))
    assert time.monotonic() - started < 30
    message = str(error.value)
    assert "\n" not in message
    assert "not in the Hugging Face cache" in message and "cannot be reached" in message
    assert "data.local_dir" in message
    assert dict(os.environ) == environment
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False


def cache_wikitext(hub_cache: Path, name: str, rows: dict) -> None:
    """WikiText's parquet files of config `name` in a Hugging Face hub cache, as a download leaves them."""
    repo = hub_cache / "datasets--Salesforce--wikitext"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / name).mkdir(parents=True)
    for split, texts in rows.items():
        for shard, shard_texts in enumerate(texts):
            path = repo / "snapshots" / commit / name / f"{split}-{shard:05d}-of-{len(texts):05d}.parquet"
            pq.write_table(pa.table({"text": shard_texts}), path)


def test_wikitext_comes_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # never asked
    monkeypatch.setattr(sources, "_hub_reachable", lambda: pytest.fail("the hub was asked"))
    cache_wikitext(tmp_path / "hub-cache", "wikitext-103-raw-v1", {
        "train": [[" = A = \n", " a .\n"], [" c .\n"]], "validation": [[" b .\n"]], "test": [[" t .\n"]]})
    cfg = DataConfig(source="wikitext", name="wikitext-103-raw-v1")
    assert load_splits(cfg) == Splits(train=" = A = \n a .\n c .\n", val=" b .\n")
    assert load_eval_text(cfg, split="test") == " t .\n"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False


@pytest.mark.parametrize("download_works", [True, False])
def test_wikitext_is_downloaded_when_the_hub_answers(tmp_path, monkeypatch, download_works):
    cache_wikitext(tmp_path, "wikitext-2-raw-v1", {"train": [[" a .\n"]], "validation": [[" b .\n"]]})
    [snapshot] = (tmp_path / "datasets--Salesforce--wikitext" / "snapshots").iterdir()

    def snapshot_download(repo, *, repo_type, allow_patterns, local_files_only):
        assert (repo, repo_type, allow_patterns) == ("Salesforce/wikitext", "dataset", ["wikitext-2-raw-v1/*"])
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        if not download_works:
            raise ConnectionError("Couldn't reach the hub\nsecond line")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(sources, "_hub_reachable", lambda: True)
    if download_works:
        assert load_splits(DataConfig(source="wikitext", name="wikitext-2-raw-v1")) == Splits(train=" a .\n", val=" b .\n")
    else:
        with pytest.raises(UserError, match="the download failed .*Couldn't reach the hub second line.*data.local_dir"):
            load_splits(DataConfig(source="wikitext", name="wikitext-2-raw-v1"))


def test_pydocs_is_deterministic_english_and_sizeable():
    first = load_splits(DataConfig(source="pydocs"))
    pydocs_documents.cache_clear()
    assert load_splits(DataConfig(source="pydocs")) == first
    assert 500_000 < len(first.train) + len(first.val) < 5_000_000
    assert 0.85 < len(first.train) / (len(first.train) + len(first.val)) < 0.95
    assert "Return" in first.train and "\nThe " in first.train
    assert first.train.count(EOT_TOKEN) > 1000


def test_pydocs_without_library_sources_says_what_to_use_instead(tmp_path, monkeypatch):
    monkeypatch.setattr("sysconfig.get_paths", lambda: {"stdlib": str(tmp_path)})
    pydocs_documents.cache_clear()
    with pytest.raises(UserError, match="data=pydocs: no standard library sources in .*use data=text"):
        load_splits(DataConfig(source="pydocs"))


def build(tmp_path, text=STORY, context_length=16, seed=0, **overrides):
    (tmp_path / "story.txt").write_text(text, encoding="utf-8")
    settings_ = dict(source="text", path=str(tmp_path / "story.txt"), train_ratio=0.9, batch_size=2, stride=16,
                     cache_dir=str(tmp_path / "cache"))
    return build_data(DataConfig(**{**settings_, **overrides}), context_length=context_length, seed=seed)


def test_build_data_gives_train_and_val_loaders(tmp_path):
    bundle = build(tmp_path)
    split_index = int(0.9 * len(STORY))
    assert bundle.train_tokens == len(encode_whole(STORY[:split_index]))
    assert bundle.val_tokens == len(encode_whole(STORY[split_index:]))
    assert {file.name.rsplit("-", 1)[0] for file in (tmp_path / "cache").iterdir()} == {"text-train", "text-val"}
    inputs, targets = next(iter(bundle.train_loader))
    assert inputs.shape == targets.shape == (2, 16)
    val_inputs = torch.cat([inputs for inputs, _ in bundle.val_loader])
    val_dataset = bundle.val_loader.dataset
    assert len(val_dataset) % 2 == 1  # so a last, partial batch exists
    assert torch.equal(val_inputs, torch.stack([val_dataset[i][0] for i in range(len(val_dataset))]))  # in order, all


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 0}, "data.batch_size=0 is not allowed: must be an integer >= 1"),
        ({"stride": 0}, "data.stride=0 is not allowed: must be an integer >= 1"),
        ({"train_ratio": 0.999}, "data: the val split has .* tokens, fewer than one window "
                                 r"\(model.context_length \+ 1 = 17\); .*a smaller data.train_ratio"),
        ({"context_length": 10_000}, "data: the train split has .*model.context_length"),
        ({"batch_size": 10_000}, "the train split gives .* windows, fewer than one batch of data.batch_size=10000"),
    ],
)
def test_build_data_rejects_settings_that_give_no_batches(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        build(tmp_path, **overrides)


def write_documents(folder: Path, kind: str, documents: list[str]) -> Path:
    """`documents` as one data file of `kind` (parquet, jsonl or txt) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"docs.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"text": documents, "id": list(range(len(documents)))}), path)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    else:
        path.write_text("\n".join(documents) + "\n")
    return path


DOCUMENTS = [f"Document {i}: the quick brown fox jumps over the lazy dog, {i * 7} times." for i in range(200)]


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "txt"])
def test_hf_local_files_become_one_token_file_with_eot_between_documents(tmp_path, kind):
    path = write_documents(tmp_path / "data", kind, DOCUMENTS)
    cfg = DataConfig(source="hf", path=str(path), train_ratio=0.75)
    train, val = split_tokens(cfg, tmp_path / "cache")
    encoding = get_encoding()
    expected = [t for d in DOCUMENTS for t in [*encoding.encode_ordinary(d), encoding.eot_token]]
    assert np.concatenate([train, val]).tolist() == expected
    assert len(train) == int(0.75 * len(expected))
    [file] = (tmp_path / "cache").glob("hf-train-*.bin")
    written = file.stat().st_mtime_ns
    split_tokens(cfg, tmp_path / "cache")  # a second run reuses the file
    assert file.stat().st_mtime_ns == written and isinstance(train, np.memmap)


def test_hf_separator_and_text_column(tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"body": ["one two", "three"]}), tmp_path / "data" / "a.parquet")
    cfg = DataConfig(source="hf", path=str(tmp_path / "data"), text_column="body", separator="", train_ratio=0.5)
    train, val = split_tokens(cfg, tmp_path / "cache")
    assert np.concatenate([train, val]).tolist() == [*get_encoding().encode("one two"), *get_encoding().encode("three")]
    with pytest.raises(UserError, match="data.text_column='text' is not a column of .*its columns: body"):
        split_tokens(DataConfig(source="hf", path=str(tmp_path / "data")), tmp_path / "cache")


def test_hf_refuses_mixed_files_and_missing_datasets_in_one_line(tmp_path):
    write_documents(tmp_path / "mixed", "jsonl", DOCUMENTS)
    write_documents(tmp_path / "mixed", "txt", DOCUMENTS)
    with pytest.raises(UserError, match="must hold files of one kind"):
        split_tokens(DataConfig(source="hf", path=str(tmp_path / "mixed")), tmp_path / "cache")
    with pytest.raises(UserError, match="data.path") as error:
        split_tokens(DataConfig(source="hf", path=str(tmp_path / "nothing-here")), tmp_path / "cache")
    assert "\n" not in str(error.value)


def test_random_offsets_are_drawn_lazily_and_dealt_to_ranks():
    """A corpus's epoch is drawn a chunk at a time; the ranks' shares interleave into one
    process's order, and a resumed sampler continues it."""
    one = RandomOffsetSampler(10**9, samples=3_000_000, seed=1)
    first = list(itertools.islice(iter(one), 5))
    ranks = [RandomOffsetSampler(10**9, samples=3_000_000, seed=1, rank=r, world_size=2) for r in range(2)]
    assert [next(iter(ranks[0])), next(iter(ranks[1]))] == first[:2]
    ranks[1].set_epoch(0, start=2)
    assert next(iter(ranks[1])) == list(itertools.islice(iter(one), 6))[5]  # rank 1's third: the job's sixth
    assert len(ranks[1]) == 1_500_000 - 2


def test_a_text_held_whole_is_cut_only_where_no_token_changes(monkeypatch):
    """A long stretch with no such place stays one piece (a row of data=hf is cut there anyway)."""
    monkeypatch.setattr(files, "MAX_PIECE_CHARS", 37)
    text = "x" * 1000 + f" and then words {EOT_TOKEN} and more" * 20
    assert tokenize(text, piece_chars=5).tolist() == encode_whole(text)
