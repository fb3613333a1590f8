"""A table as aligned plain text, as `compare` and `bench` print theirs."""


def format_table(columns: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    """`columns` over `rows` (cells as text), two spaces between columns, the columns whose
    index is in `right` aligned right, the others left."""
    lines = [columns, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) if i in right else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(line, widths))).rstrip() for line in lines)
