"""Local data files (parquet, json lines or a json array, csv, text) read in place as a stream of
text pieces, each a bounded stretch of one row: a long row or line never sits whole in the
tokenizer, and a line of a text file is not even read whole. A file that cannot be read as its
kind is a UserError naming it and what is wrong (the line, or the row)."""

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from gpt2exp.errors import UserError

log = logging.getLogger("gpt2exp.data")

BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text"}
PIECE_CHARS = 1 << 16  # pieces are cut where no token changes, at the first such place past this
MAX_PIECE_CHARS = 1 << 20  # a stretch this long with no such place is cut anyway (its tokens there may differ)
BATCH_CHARS = 1 << 20  # the text a batch holds (a parquet batch: by its column's widest row group)
ROWS_PER_BATCH = 1024
CSV_BLOCK_BYTES = 1 << 22

Piece = tuple[str, bool]  # a stretch of a row's text, and whether the row ends with it

# GPT-2's pre-tokenizer pattern always starts a new piece at a space followed by a non-space
# character: the piece before ends there (no piece joins a non-space character with the
# whitespace after it, and a run of whitespace gives up its last character to the next piece),
# and every piece that can start with a space (` ?\p{L}++`, ` ?\p{N}++`, ` ?[^\s\p{L}\p{N}]++`)
# depends only on the text after it. So cutting the text before such a space, unless a special
# token follows it, changes no piece and no token. (Whatever Python's re calls non-space, so
# does the pattern.)
SAFE_CUT = re.compile(r" (?=[^\s<])")


def data_files(path: str) -> list[Path]:
    """The data files `path` names: a file, or a folder's files of one supported kind (symbolic
    links followed, hidden files and folders, macOS's `._*` ones too, skipped), in sorted
    order; [] when `path` is neither (then it names a hub dataset)."""
    given = Path(path).expanduser()
    if given.is_file():
        files = [given]
    elif given.is_dir():
        try:
            files = sorted(_files_under(given, seen=set()))
        except OSError as err:
            raise UserError(f"data.path: cannot read the folder '{err.filename}' ({err.strerror})") from None
        if not files:
            raise UserError(f"data.path: no {', '.join(BUILDERS)} files in folder {path!r}")
    else:
        return []
    kinds = {BUILDERS.get(f.suffix) for f in files}
    if None in kinds or len(kinds) > 1:
        raise UserError(f"data.path: {path!r} must hold files of one kind: {', '.join(BUILDERS)}")
    return files


def _files_under(folder: Path, seen: set) -> Iterator[Path]:
    """The data files in `folder` and its subfolders, linked ones included; a folder met again
    (through a link back up, a loop, or a second way to it) is skipped with a warning naming it."""
    where = folder.stat()
    if (where.st_dev, where.st_ino) in seen:
        log.warning("data.path: skipped %s, the folder %s read already (a link leads there again)", folder,
                    folder.resolve())
        return
    seen.add((where.st_dev, where.st_ino))
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _files_under(Path(entry.path), seen)
        elif entry.is_file() and Path(entry.name).suffix in BUILDERS:
            yield Path(entry.path)


def read_pieces(files: list[Path], column: str) -> Iterator[Piece]:
    """The text of every row of `files` (column `column`; each line of a text file), in pieces."""
    for file in files:
        kind = BUILDERS[file.suffix]
        unreadable: tuple[type[Exception], ...] = (OSError, *_arrow_errors(kind))
        try:
            yield from _READERS[kind](file, column)
        except UnicodeDecodeError:
            raise UserError(f"data.path: '{file}' line {_first_undecodable_line(file)} is not UTF-8 text") from None
        except unreadable as err:
            problem = " ".join(str(err).split())
            if "straddl" in problem:
                problem = f"a row longer than {CSV_BLOCK_BYTES >> 20} MB; use parquet or json lines for such rows"
            raise UserError(f"data.path: cannot read '{file}' as {kind} ({problem})") from None


def _arrow_errors(kind: str) -> tuple[type[Exception], ...]:
    """What pyarrow raises on a file it cannot read (pyarrow is imported only for its kinds)."""
    if kind not in ("parquet", "csv"):
        return ()
    import pyarrow

    return (pyarrow.ArrowException,)


def row_pieces(text: str | None, *, cut_anyway: bool = True) -> Iterator[Piece]:
    """A whole row's text in pieces, cut as they are taken; nothing for a null or empty one.
    `cut_anyway`: see `_next_cut` (False: pieces are cut only where no token changes)."""
    if text:
        start = 0
        while (cut := _next_cut(text, start, cut_anyway)) is not None:
            yield text[start:cut], False
            start = cut
        yield text[start:], True


def text_of(value, column: str, where: str) -> str | None:
    """`value` of the text column, which must be text (or null); `where` names the row."""
    if value is None or isinstance(value, str):
        return value
    raise UserError(f"data.text_column={column!r}: {where} holds {type(value).__name__} {str(value)[:40]!r}, not text")


def check_column(column: str, columns: list[str], source) -> None:
    if column not in columns:
        raise UserError(f"data.text_column={column!r} is not a column of '{source}' (its columns: {', '.join(columns)})")


def _next_cut(text: str, start: int, cut_anyway: bool = True) -> int | None:
    """Where the piece of `text` from `start` ends: at the first place past `PIECE_CHARS` where
    cutting changes no token (see `SAFE_CUT`: it needs only the character after it, so text
    that goes on later may be cut as it comes), else (`cut_anyway`) after `MAX_PIECE_CHARS`;
    None when the rest is not longer than that and has no such place yet."""
    if len(text) - start <= PIECE_CHARS:
        return None
    if not cut_anyway:
        cut = SAFE_CUT.search(text, start + PIECE_CHARS)
        return None if cut is None else cut.start()
    cut = SAFE_CUT.search(text, start + PIECE_CHARS, start + MAX_PIECE_CHARS + 1)
    if cut is not None:
        return cut.start()
    return start + MAX_PIECE_CHARS if len(text) - start > MAX_PIECE_CHARS else None


def _text_lines(file: Path, column: str) -> Iterator[Piece]:
    """Each line (without its newline) a row, read `PIECE_CHARS` characters at a time."""
    with file.open(encoding="utf-8") as lines:
        rest = ""
        while chunk := lines.readline(PIECE_CHARS):
            line_ends = chunk.endswith("\n")
            text, start = rest + (chunk[:-1] if line_ends else chunk), 0
            while (cut := _next_cut(text, start)) is not None:
                yield text[start:cut], False
                start = cut
            rest = text[start:]
            if line_ends:
                if rest:
                    yield rest, True
                rest = ""
        if rest:
            yield rest, True


def _json_rows(file: Path, column: str) -> Iterator[Piece]:
    """JSON lines (an object a line), or one JSON array of objects."""
    with file.open(encoding="utf-8") as lines:
        if lines.read(1 << 12).lstrip().startswith("["):
            lines.seek(0)
            yield from _json_array(lines, column, file)
            return
        lines.seek(0)
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield from row_pieces(_json_text(line, column, f"'{file}' line {number}"))


def _json_text(line: str, column: str, where: str) -> str | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"data.path: {where} is not JSON ({err.msg}, column {err.colno})") from None
    return _object_text(row, column, where)


def _object_text(row, column: str, where: str) -> str | None:
    if not isinstance(row, dict):
        raise UserError(f"data.path: {where} is a JSON {type(row).__name__}, not an object with a {column!r} key")
    if column not in row:
        raise UserError(f"data.text_column={column!r} is not a key of {where} (its keys: {', '.join(row)})")
    return text_of(row[column], column, where)


def _json_array(text, column: str, file: Path) -> Iterator[Piece]:
    """The objects of a JSON array, decoded one at a time from a buffer that holds little more
    than the object being decoded."""
    decoder = json.JSONDecoder()
    buffer, number = text.read(PIECE_CHARS), 0
    at = buffer.index("[") + 1
    while True:
        while at < len(buffer) and (buffer[at].isspace() or (buffer[at] == "," and number)):
            at += 1
        if at < len(buffer) and buffer[at] == "]":
            return
        try:
            if at == len(buffer):
                raise json.JSONDecodeError("the file ends before the array's closing ]", buffer, at)
            row, end = decoder.raw_decode(buffer, at)
        except json.JSONDecodeError as err:
            more = text.read(max(PIECE_CHARS, len(buffer) - at))  # the object may go on: read as much again
            if not more:
                raise UserError(f"data.path: '{file}' item {number + 1} of its JSON array is not JSON "
                                f"({err.msg})") from None
            buffer, at = buffer[at:] + more, 0
            continue
        number += 1
        yield from row_pieces(_object_text(row, column, f"'{file}' item {number} of its JSON array"))
        at = end


def _parquet_rows(file: Path, column: str) -> Iterator[Piece]:
    import pyarrow as pa  # imported only for the kinds that need it, as in _arrow_errors
    import pyarrow.parquet as pq

    # The system allocator gives each batch's memory back (mimalloc, pyarrow's default, keeps
    # it, and the process grows with the file); no read-ahead of whole row groups.
    pa.set_memory_pool(pa.system_memory_pool())
    parquet = pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)
    check_column(column, parquet.schema_arrow.names, file)
    kind = parquet.schema_arrow.field(column).type
    values = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not any(is_text(values) for is_text in (pa.types.is_string, pa.types.is_large_string,
                                                pa.types.is_string_view, pa.types.is_null)):
        raise UserError(f"data.text_column={column!r}: '{file}' holds {kind} values in it, not text")
    for batch in parquet.iter_batches(batch_size=_parquet_batch_rows(parquet, column), columns=[column],
                                      use_threads=False):
        for value in batch.column(0).to_pylist():
            yield from row_pieces(value)


def _parquet_batch_rows(parquet, column: str) -> int:
    """Rows a batch of `BATCH_CHARS` holds, by the row group whose rows are widest on average."""
    meta, widest = parquet.metadata, 1
    for index in range(meta.num_row_groups):
        group = meta.row_group(index)
        for chunk in map(group.column, range(group.num_columns)):
            if chunk.path_in_schema == column and group.num_rows:
                widest = max(widest, chunk.total_uncompressed_size // group.num_rows)
    return max(1, min(ROWS_PER_BATCH, BATCH_CHARS // widest))


def _csv_rows(file: Path, column: str) -> Iterator[Piece]:
    import pyarrow as pa  # as in _parquet_rows
    import pyarrow.csv

    reader = pyarrow.csv.open_csv(file, read_options=pyarrow.csv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                                  convert_options=pyarrow.csv.ConvertOptions(column_types={column: pa.string()}))
    check_column(column, reader.schema.names, file)
    for batch in reader:
        for value in batch.column(column).to_pylist():
            yield from row_pieces(value)


def _first_undecodable_line(file: Path) -> int | str:
    with file.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return "?"


_READERS = {"parquet": _parquet_rows, "json": _json_rows, "csv": _csv_rows, "text": _text_lines}
