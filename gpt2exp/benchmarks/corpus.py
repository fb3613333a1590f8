"""Data-pipeline timings: tokenizing a corpus into the token cache, and reading it back; a
large corpus tokenized into a token file, beside the straightforward `datasets.map` recipe."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpt2exp.config import DataConfig, DataSource
from gpt2exp.data import pydocs_documents
from gpt2exp.data.hub import split_tokens
from gpt2exp.data.token_files import text_source, token_file
from gpt2exp.tokenizer import get_encoding


def measure_token_cache(text: str) -> dict[str, float]:
    """Seconds to tokenize ``text`` into a token file in an empty cache (``tokenize_s``), and to
    find it there and read every token (``reload_s``); with the corpus's size."""
    get_encoding()  # built once per process, not part of either figure
    with tempfile.TemporaryDirectory(prefix="gpt2exp-bench-") as cache_dir:
        start = time.perf_counter()
        token_file(text_source(text, "bench"), Path(cache_dir))
        tokenize_s = time.perf_counter() - start
        start = time.perf_counter()
        tokens = np.array(token_file(text_source(text, "bench"), Path(cache_dir)))
        reload_s = time.perf_counter() - start
    return {"characters": len(text), "tokens": len(tokens), "tokenize_s": tokenize_s, "reload_s": reload_s}


def write_corpus(folder: Path, megabytes: float) -> Path:
    """A parquet file of about `megabytes` MB of English documents (the standard library's
    docstrings, numbered so that no two are the same) in a "text" column."""
    documents, rows, size = pydocs_documents(), list[str](), 0
    while size < megabytes * 1e6:
        text = f"{len(rows)}. {documents[len(rows) % len(documents)]}"
        rows.append(text)
        size += len(text.encode("utf-8"))
    path = folder / "corpus.parquet"
    pq.write_table(pa.table({"text": rows}), path, row_group_size=4096)  # as sharded datasets are read
    return path


def measure_large_corpus(megabytes: float) -> dict[str, dict[str, float]]:
    """Tokenize a generated corpus of `megabytes` MB into a token file two ways, each in a fresh
    process: gpt2exp's (`data=hf`: batches of rows, tiktoken's threads, straight to the file) and
    the straightforward recipe (``datasets.map(encode_ordinary, num_proc=cores)``, then the ids
    copied into a memmap, as nanoGPT's prepare scripts do). MB/s of text, the process's peak RSS
    in MB, and the tokens written."""
    with tempfile.TemporaryDirectory(prefix="gpt2exp-bench-corpus-") as folder:
        corpus = write_corpus(Path(folder), megabytes)
        text_mb = pq_text_bytes(corpus) / 1e6
        results = {}
        for way in ("gpt2exp", "datasets.map"):
            seconds, tokens, peak_mb = tokenize_in_process(way, corpus, Path(folder) / way)
            results[way] = {"mb_per_s": text_mb / seconds, "peak_rss_mb": peak_mb, "tokens": tokens}
    return results


def tokenize_in_process(way: str, corpus: Path, out: Path) -> tuple[float, int, float]:
    """(seconds, tokens, peak RSS in MB) of tokenizing `corpus` one `way` in a fresh process."""
    command = [sys.executable, "-m", "gpt2exp.benchmarks.corpus", way, str(corpus), str(out)]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True,
                            env={**os.environ, "HF_DATASETS_CACHE": str(out.parent)})
    return tuple(json.loads(result.stdout.splitlines()[-1]))


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM starts afresh at exec; getrusage's maxrss would count
    the parent's pages that the fork shared)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def pq_text_bytes(path: Path) -> int:
    return sum(len(text.encode("utf-8")) for text in pq.read_table(path, columns=["text"]).column("text").to_pylist())


def _tokenize_gpt2exp(corpus: str, out: str) -> int:
    return sum(len(tokens) for tokens in split_tokens(DataConfig(source=DataSource.hf, path=corpus), Path(out)))


def _tokenize_with_map(corpus: str, out: str) -> int:
    """nanoGPT's prepare.py: map encode_ordinary over the rows in processes, then copy the ids
    into a memmap shard by shard."""
    import datasets  # slow to import: only this way, not gpt2exp's, needs it

    datasets.disable_progress_bars()
    encoding = get_encoding()

    def encode(row):
        ids = [*encoding.encode_ordinary(row["text"]), encoding.eot_token]
        return {"ids": ids, "len": len(ids)}

    dataset = datasets.load_dataset("parquet", data_files=corpus, split="train")
    tokenized = dataset.map(encode, remove_columns=["text"], num_proc=os.cpu_count())
    total = int(np.sum(tokenized["len"], dtype=np.uint64))
    tokens = np.memmap(Path(out) / "train.bin", dtype=np.uint16, mode="w+", shape=(total,))
    start = 0
    for shard in range(64):
        batch = tokenized.shard(64, shard, contiguous=True).with_format("numpy")
        chunk = np.concatenate(batch["ids"]) if len(batch) else np.zeros(0, dtype=np.uint16)
        tokens[start : start + len(chunk)] = chunk
        start += len(chunk)
    tokens.flush()
    return start


if __name__ == "__main__":  # one way of tokenizing, timed in a process of its own: way corpus out
    import datasets  # noqa: F401 - imported before the clock starts, as the encoding is built

    way, corpus, out = sys.argv[1:]
    Path(out).mkdir(parents=True, exist_ok=True)
    get_encoding()
    started = time.perf_counter()
    count = (_tokenize_gpt2exp if way == "gpt2exp" else _tokenize_with_map)(corpus, out)
    print(json.dumps([time.perf_counter() - started, count, _peak_rss_mb()]))
