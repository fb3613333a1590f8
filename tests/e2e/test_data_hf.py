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
from helpers.data_hf import DOCUMENTS, expected_tokens, write_parquet

from gpt2exp.tokenizer import get_encoding


def files_under(folder: Path) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*") if not p.is_dir()}


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


_PEAK = """
import sys
from pathlib import Path
from gpt2exp.config import DataConfig
from gpt2exp.data.hub import split_tokens
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


def test_a_48_mb_line_takes_no_more_memory_than_a_1_mb_line(tmp_path):
    """A line is read and tokenized a piece at a time: the peak RSS of tokenizing a text file
    whose one line is 48 MB stays within 100 MB of that of a 1 MB line (each row whole in the
    tokenizer took about 13 bytes a byte: +630 MB)."""
    small = peak_rss_mb(one_long_line(tmp_path / "small.txt", 1), tmp_path / "cache")
    large = peak_rss_mb(one_long_line(tmp_path / "large.txt", 48), tmp_path / "cache")
    assert large - small < 100, (small, large)
