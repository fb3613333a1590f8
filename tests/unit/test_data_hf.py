"""`data=hf` on local files a user got wrong, folders of shards, and the token file's own checks."""
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.data_hf import DOCUMENTS, expected_tokens, write_parquet

from gpt2exp.config import DataConfig
from gpt2exp.data import files
from gpt2exp.data.hub import split_tokens
from gpt2exp.data.token_files import HEADER_BYTES
from gpt2exp.errors import UserError
from gpt2exp.tokenizer import get_encoding


def tokens_of(path, tmp_path, **overrides):
    cfg = DataConfig(source="hf", path=str(path), train_ratio=0.5, **overrides)
    return np.concatenate(split_tokens(cfg, tmp_path / "cache")).tolist()


def test_a_json_array_reads_as_its_json_lines_do(tmp_path):
    (tmp_path / "array.json").write_text(json.dumps([{"text": d, "id": i} for i, d in enumerate(DOCUMENTS)], indent=2))
    (tmp_path / "lines.json").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCUMENTS))
    assert tokens_of(tmp_path / "array.json", tmp_path) == expected_tokens(DOCUMENTS)
    assert tokens_of(tmp_path / "lines.json", tmp_path) == expected_tokens(DOCUMENTS)


def test_a_json_array_is_read_a_piece_at_a_time(tmp_path, monkeypatch):
    """Rows longer than the buffer the array is read into, and many rows per buffer."""
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
    long_rows = [" ".join(ODD_ROWS), *ODD_ROWS, "".join(ODD_ROWS)]
    path = write_rows(tmp_path, kind, long_rows)
    for piece_chars in (1, 2, 3, 5, 8):
        monkeypatch.setattr(files, "PIECE_CHARS", piece_chars)
        assert tokens_of(path, tmp_path / str(piece_chars)) == expected_tokens(long_rows)


@pytest.mark.parametrize("kind", ["txt", "parquet"])
def test_a_row_with_no_place_to_cut_is_cut_anyway_and_keeps_its_text(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(files, "PIECE_CHARS", 5)
    monkeypatch.setattr(files, "MAX_PIECE_CHARS", 40)
    rows = ["x" * 1000 + " and then words", "caf\u00e9" * 300]
    tokens = tokens_of(write_rows(tmp_path, kind, rows), tmp_path)
    assert get_encoding().decode(tokens) == "".join(row + "<|endoftext|>" for row in rows)


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
