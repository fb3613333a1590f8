"""`data=hf` on local files a user got wrong, folders of shards, and the token file's own checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import TINY

from gpt2exp.config import DataConfig
from gpt2exp.data.hf import HEADER_BYTES, split_tokens
from gpt2exp.errors import UserError
from gpt2exp.tokenizer import get_encoding

DOCUMENTS = [f"Document {i}: the quick brown fox jumps over the lazy dog, {i * 7} times." for i in range(200)]


def expected_tokens(documents):
    encoding = get_encoding()
    return [t for d in documents for t in [*encoding.encode_ordinary(d), encoding.eot_token]]


def tokens_of(path, tmp_path, **overrides):
    cfg = DataConfig(source="hf", path=str(path), train_ratio=0.5, **overrides)
    return np.concatenate(split_tokens(cfg, tmp_path / "cache")).tolist()


def write_parquet(path, documents=DOCUMENTS):
    pq.write_table(pa.table({"text": documents}), path)
    return path


def files_under(folder: Path) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*") if not p.is_dir()}


# --- malformed files: one line naming the file, exit 2, nothing left behind ----------------------


def truncated_parquet(folder):
    whole = write_parquet(folder / "docs.parquet").read_bytes()
    (folder / "docs.parquet").write_bytes(whole[: len(whole) // 2])
    return "docs.parquet", "cannot read '{path}' as parquet (Parquet magic bytes not found"


def garbage_parquet(folder):
    (folder / "docs.parquet").write_bytes(b"PAR1 not really a parquet file " * 8)
    return "docs.parquet", "cannot read '{path}' as parquet"


def empty_parquet(folder):
    (folder / "docs.parquet").write_bytes(b"")
    return "docs.parquet", "cannot read '{path}' as parquet (Parquet file size is 0 bytes)"


def jsonl_with_a_bad_line(folder):
    lines = [json.dumps({"text": d}) for d in DOCUMENTS[:5]]
    lines[3] = '{"text": "cut off'
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return "docs.jsonl", "'{path}' line 4 is not JSON"


def jsonl_with_a_number(folder):
    (folder / "docs.jsonl").write_text('{"text": "fine"}\n{"text": 1234}\n')
    return "docs.jsonl", "data.text_column='text': '{path}' line 2 holds int '1234', not text"


def parquet_with_numbers(folder):
    pq.write_table(pa.table({"text": [1, 2, 3]}), folder / "docs.parquet")
    return "docs.parquet", "data.text_column='text': '{path}' holds int64 values in it, not text"


def json_array_with_a_list(folder):
    (folder / "docs.json").write_text(json.dumps([{"text": "fine"}, {"text": ["a", "b"]}], indent=1))
    return "docs.json", "'{path}' item 2 of its JSON array holds list"


def empty_csv(folder):
    (folder / "docs.csv").write_bytes(b"")
    return "docs.csv", "cannot read '{path}' as csv (Empty CSV file)"


def latin1_text(folder):
    (folder / "docs.txt").write_bytes("line one\ncaf\u00e9 au lait\n".encode("latin-1"))
    return "docs.txt", "'{path}' line 2 is not UTF-8 text"


def latin1_jsonl(folder):
    (folder / "docs.jsonl").write_bytes(("\n".join(json.dumps({"text": d}) for d in DOCUMENTS[:300]) + "\n"
                                         + '{"text": "caf\u00e9"}\n').encode("latin-1"))
    return "docs.jsonl", "'{path}' line 201 is not UTF-8 text"


@pytest.mark.slow
@pytest.mark.parametrize("make", [truncated_parquet, garbage_parquet, empty_parquet, jsonl_with_a_bad_line,
                                  jsonl_with_a_number, parquet_with_numbers, json_array_with_a_list, empty_csv,
                                  latin1_text, latin1_jsonl])
def test_a_malformed_data_file_is_one_line_naming_it(run_module, tmp_path, make):
    name, message = make(tmp_path)
    before = files_under(tmp_path)
    result = run_module("gpt2exp.train", *TINY, "data=hf", f"data.path={name}", "data.cache_dir=cache",
                        "logger=none", "trainer.max_steps=2")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert message.format(path=name) in line, line
    assert files_under(tmp_path) == before  # no token file, no temporary
    assert not (tmp_path / "outputs").exists()  # no run folder


def test_a_json_array_reads_as_its_json_lines_do(tmp_path):
    (tmp_path / "array.json").write_text(json.dumps([{"text": d, "id": i} for i, d in enumerate(DOCUMENTS)], indent=2))
    (tmp_path / "lines.json").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCUMENTS))
    assert tokens_of(tmp_path / "array.json", tmp_path) == expected_tokens(DOCUMENTS)
    assert tokens_of(tmp_path / "lines.json", tmp_path) == expected_tokens(DOCUMENTS)


def test_a_json_array_is_read_a_piece_at_a_time(tmp_path, monkeypatch):
    """Rows longer than the buffer the array is read into, and many rows per buffer."""
    from gpt2exp.data import files

    monkeypatch.setattr(files, "PIECE_CHARS", 64)
    documents = [*DOCUMENTS[:50], " ".join(DOCUMENTS), *DOCUMENTS[50:]]
    (tmp_path / "array.json").write_text(json.dumps([{"text": d} for d in documents]))
    assert tokens_of(tmp_path / "array.json", tmp_path) == expected_tokens(documents)


def test_null_and_empty_texts_are_skipped(tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"text": "one"}\n{"text": null}\n\n{"text": ""}\n{"text": "two"}\n')
    assert tokens_of(tmp_path / "docs.jsonl", tmp_path) == expected_tokens(["one", "two"])


def test_parquet_text_of_any_arrow_string_type_is_read(tmp_path):
    texts = pa.array(DOCUMENTS[:20])
    for name, column in [("large", texts.cast(pa.large_string())), ("view", texts.cast(pa.string_view())),
                         ("dictionary", texts.dictionary_encode())]:
        pq.write_table(pa.table({"text": column}), tmp_path / f"{name}.parquet")
        assert tokens_of(tmp_path / f"{name}.parquet", tmp_path / name) == expected_tokens(DOCUMENTS[:20])


def test_csv_text_that_looks_like_numbers_stays_text(tmp_path):
    (tmp_path / "docs.csv").write_text("text,id\n1234,1\n5678,2\n")
    assert tokens_of(tmp_path / "docs.csv", tmp_path) == expected_tokens(["1234", "5678"])


ODD_ROWS = [
    "It's  the  fox's 12,345 dogs\tand  \u00a0 caf\u00e9s \u3000 x  \U0001f600 y <|endoftext|> z   ",
    " leading space, then  two,   three    and four spaces; trailing tab\t",
    "'s 'll 've '<> <|endoftext|><|endoftext|>  !! ?? ... -- \u2028 done",
] * 20


def write_rows(folder: Path, kind: str, rows: list[str]) -> Path:
    path = folder / f"rows.{kind}"
    if kind == "parquet":
        write_parquet(path, rows)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    else:
        path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_rows_cut_into_pieces_give_the_tokens_of_each_whole_row(tmp_path, monkeypatch, kind):
    from gpt2exp.data import files

    long_rows = [" ".join(ODD_ROWS), *ODD_ROWS, "".join(ODD_ROWS)]
    path = write_rows(tmp_path, kind, long_rows)
    for piece_chars in (1, 2, 3, 5, 8):
        monkeypatch.setattr(files, "PIECE_CHARS", piece_chars)
        assert tokens_of(path, tmp_path / str(piece_chars)) == expected_tokens(long_rows)


@pytest.mark.parametrize("kind", ["txt", "parquet"])
def test_a_row_with_no_place_to_cut_is_cut_anyway_and_keeps_its_text(tmp_path, monkeypatch, kind):
    from gpt2exp.data import files

    monkeypatch.setattr(files, "PIECE_CHARS", 5)
    monkeypatch.setattr(files, "MAX_PIECE_CHARS", 40)
    rows = ["x" * 1000 + " and then words", "caf\u00e9" * 300]
    tokens = tokens_of(write_rows(tmp_path, kind, rows), tmp_path)
    assert get_encoding().decode(tokens) == "".join(row + "<|endoftext|>" for row in rows)


# --- folders of shards ---------------------------------------------------------------------------


def test_hidden_and_macos_resource_files_in_a_shard_folder_are_skipped(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_parquet(shards / "part-0.parquet", DOCUMENTS[:100])
    write_parquet(shards / "part-1.parquet", DOCUMENTS[100:])
    (shards / "._part-0.parquet").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
    (shards / ".hidden").mkdir()
    (shards / ".hidden" / "old.parquet").write_bytes(b"not parquet")
    assert tokens_of(shards, tmp_path) == expected_tokens(DOCUMENTS)


def test_symlinked_subfolders_are_followed_once_and_a_loop_is_named(tmp_path, caplog):
    shards, elsewhere = tmp_path / "shards", tmp_path / "elsewhere"
    for folder in (shards, elsewhere):
        folder.mkdir()
    write_parquet(shards / "a.parquet", DOCUMENTS[:100])
    write_parquet(elsewhere / "b.parquet", DOCUMENTS[100:])
    (shards / "more").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "up").symlink_to(shards, target_is_directory=True)  # a loop: shards/more/up is shards
    with caplog.at_level("WARNING", logger="gpt2exp.data"):
        assert tokens_of(shards, tmp_path) == expected_tokens(DOCUMENTS)
    assert f"skipped {shards / 'more' / 'up'}, the folder {shards} read already" in caplog.text


def test_an_unreadable_subfolder_is_one_line_naming_it(tmp_path, monkeypatch):
    shards = tmp_path / "shards"
    (shards / "locked").mkdir(parents=True)
    write_parquet(shards / "a.parquet")
    scandir = os.scandir

    def scandir_as_another_user(folder):  # root reads any folder: a chmod 0 would not stop these tests
        if Path(folder).name == "locked":
            raise PermissionError(13, "Permission denied", str(folder))
        return scandir(folder)

    monkeypatch.setattr(os, "scandir", scandir_as_another_user)
    with pytest.raises(UserError, match=f"data.path: cannot read the folder '{shards / 'locked'}' "
                                        r"\(Permission denied\)"):
        tokens_of(shards, tmp_path)


# --- the token file's header ---------------------------------------------------------------------


def token_file_of(tmp_path):
    [file] = (tmp_path / "cache").glob("hf-train-*.bin")
    return file


@pytest.mark.parametrize("damage, problem", [
    (lambda data: data[: HEADER_BYTES + (len(data) - HEADER_BYTES) // 4 * 2], "bytes of tokens, its header says"),
    (lambda data: data[:-1], "bytes of tokens, its header says"),  # an odd length
    (lambda data: data[HEADER_BYTES:], "no valid header"),  # a file of an earlier version
    (lambda data: b"", "no valid header"),
])
def test_a_damaged_token_file_is_rebuilt_saying_why(tmp_path, caplog, damage, problem):
    path = write_parquet(tmp_path / "docs.parquet")
    assert tokens_of(path, tmp_path) == expected_tokens(DOCUMENTS)
    file = token_file_of(tmp_path)
    file.write_bytes(damage(file.read_bytes()))
    with caplog.at_level("WARNING", logger="gpt2exp.data"):
        assert tokens_of(path, tmp_path) == expected_tokens(DOCUMENTS)
    assert f"rebuilding the token file {file}: " in caplog.text and problem in caplog.text
    assert token_file_of(tmp_path) == file


def test_sources_changed_in_place_with_the_same_size_and_time_are_tokenized_again(tmp_path, caplog):
    path = write_parquet(tmp_path / "docs.parquet")
    stat = path.stat()
    tokens_of(path, tmp_path)
    changed = [d.replace("fox", "cat") for d in DOCUMENTS]
    write_parquet(path, changed)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as rsync -t or a restored backup leaves it
    with caplog.at_level("WARNING", logger="gpt2exp.data"):
        assert tokens_of(path, tmp_path) == expected_tokens(changed)
    assert "its source files changed since it was made" in caplog.text


def test_no_text_leaves_no_token_file(tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(UserError, match="holds no text in column 'text'"):
        tokens_of(tmp_path / "docs.jsonl", tmp_path)
    assert not list((tmp_path / "cache").iterdir())


# --- held-out text: eval data=hf, and a hub dataset's test split at the end of a run ---------------


@pytest.mark.slow
def test_eval_data_hf_scores_the_local_files_whole(run_module, train_run, tmp_path):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCUMENTS))
    result = run_module("gpt2exp.eval", f"ckpt={train_run}", "data=hf", "data.path=docs.jsonl", "eval.stride=16",
                        "logger=none", "hydra.run.dir=eval")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["split"] == "text"
    assert report["tokens"] == len(expected_tokens(DOCUMENTS)) - 1  # every token but the first, scored once


# `datasets.load_dataset` answering for the hub with WikiText-103's rows, as released (a line a row):
# the split's name in each row, so that the test split's own tokens can be counted.
_FAKE_HUB_TRAIN = """
import runpy, sys
import datasets

def load_dataset(path, name=None, split=None, streaming=False):
    assert (path, name, streaming) == ("Salesforce/wikitext", "wikitext-103-raw-v1", False), (path, name)
    return datasets.Dataset.from_dict({"text": [" = Foxes = \\n", *[f" The {split} fox jumps . \\n"] * 300]})

datasets.load_dataset = load_dataset
sys.argv = ["gpt2exp.train", *sys.argv[1:]]
runpy.run_module("gpt2exp.train", run_name="__main__")
"""


@pytest.mark.slow
def test_a_wikitext103_run_ends_scored_on_its_test_split(tmp_path):
    def train(*args):
        return subprocess.run([sys.executable, "-c", _FAKE_HUB_TRAIN, *TINY, "trainer.max_steps=2", "logger=none",
                               *args], cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=300)

    result = train("data=wikitext103", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    test_text = " = Foxes = \n" + " The test fox jumps . \n" * 300
    assert summary["test/tokens"] == len(get_encoding().encode(test_text)) - 1
    assert summary["test/perplexity"] == pytest.approx(np.exp(summary["test/loss"]))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCUMENTS))
    local = train("data=hf", "data.path=docs.jsonl", "trainer.test=true", "hydra.run.dir=local")
    assert local.returncode == 2
    [line] = local.stderr.strip().splitlines()
    assert "trainer.test=true needs a test split: data=hf on local files has none" in line


# --- memory: bounded by bytes, not rows ----------------------------------------------------------

_PEAK = """
import sys
from pathlib import Path
from gpt2exp.config import DataConfig
from gpt2exp.data.hf import HEADER_BYTES, split_tokens
from gpt2exp.tokenizer import get_encoding
get_encoding()
split_tokens(DataConfig(source="hf", path=sys.argv[1]), Path(sys.argv[2]))
status = Path("/proc/self/status").read_text()
print(int(status.split("VmHWM:")[1].split()[0]) // 1024)
"""


def peak_rss_mb(path: Path, cache: Path) -> int:
    """The peak RSS, in MB, of a fresh process that tokenizes `path` (VmHWM starts afresh at exec)."""
    result = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(cache)], capture_output=True, text=True,
                            check=True, timeout=600)
    return int(result.stdout.split()[-1])


def one_long_line(path: Path, megabytes: int) -> Path:
    words = " ".join(DOCUMENTS)
    with path.open("w") as file:
        for _ in range(megabytes * 10**6 // len(words) + 1):
            file.write(words + " ")
        file.write("\nand a short line after it\n")
    return path


@pytest.mark.slow
def test_a_48_mb_line_takes_no_more_memory_than_a_1_mb_line(tmp_path):
    """A line is read and tokenized a piece at a time: the peak RSS of tokenizing a text file
    whose one line is 48 MB stays within 100 MB of that of a 1 MB line (each row whole in the
    tokenizer took about 13 bytes a byte: +630 MB)."""
    small = peak_rss_mb(one_long_line(tmp_path / "small.txt", 1), tmp_path / "cache")
    large = peak_rss_mb(one_long_line(tmp_path / "large.txt", 48), tmp_path / "cache")
    assert large - small < 100, (small, large)
