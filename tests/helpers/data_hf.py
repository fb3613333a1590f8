"""What the unit and end-to-end tests of data hf share."""

import pyarrow as pa
import pyarrow.parquet as pq

from gpt2exp.tokenizer import get_encoding

DOCUMENTS = [f"Document {i}: the quick brown fox jumps over the lazy dog, {i * 7} times." for i in range(200)]


def expected_tokens(documents):
    encoding = get_encoding()
    return [t for d in documents for t in [*encoding.encode_ordinary(d), encoding.eot_token]]


def write_parquet(path, documents=DOCUMENTS):
    pq.write_table(pa.table({"text": documents}), path)
    return path
