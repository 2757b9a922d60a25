"""What the command line prints as tables: laid out for a terminal of any width, or as CSV or JSON.

A table is given as rows of raw values (what CSV and JSON carry) with a formatter per column for people
(thousands separators, percentages, "-" for a missing value: never "nan"). In a terminal, columns wrap within
their cells rather than cut a value short, so an 80-column terminal shows every value whole.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table

Format = Literal["table", "csv", "json"]
FORMATS: tuple[str, ...] = ("table", "csv", "json")


def missing(value: Any) -> bool:
    """None, NaN (any float type) or pandas' NA."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except TypeError:  # pandas.NA is neither equal nor unequal to itself
        return True


def count(value: Any) -> str:
    return "-" if missing(value) else f"{int(value):,}"


def percent(value: Any, digits: int = 1) -> str:
    return "-" if missing(value) else f"{float(value):.{digits}%}"


def fixed(digits: int) -> Callable[[Any], str]:
    return lambda value: "-" if missing(value) else f"{float(value):.{digits}f}"


def text(value: Any) -> str:
    return "-" if missing(value) else str(value)


def plain(value: Any) -> Any:
    """A value as CSV and JSON carry it: numpy scalars as Python ones, NaN as empty."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    return None if missing(value) else value


class Output:
    """Tables for one command: printed as they come (``table``, ``csv``) or gathered into one JSON
    document printed by ``close`` (``json``). Prose goes to ``say``: stdout beside a table, stderr beside CSV
    or JSON, so that what a script reads is only data."""

    def __init__(self, fmt: Format, console: Console, err: Console) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self.console = console if fmt == "table" else err
        self._tables: dict[str, list[dict[str, Any]]] = {}

    def say(self, message: str) -> None:
        self.console.print(message)

    def table(
        self,
        title: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        formats: Sequence[Callable[[Any], str]] | None = None,
        show_header: bool = True,
    ) -> None:
        formats = list(formats) if formats is not None else [text] * len(columns)
        if self.fmt == "json":
            self._tables[title] = [{c: plain(v) for c, v in zip(columns, row, strict=True)} for row in rows]
            return
        if self.fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            if title:
                buffer.write(f"# {title}\n")
            writer.writerow(columns)
            writer.writerows([[plain(v) for v in row] for row in rows])
            sys.stdout.write(buffer.getvalue() + "\n")
            sys.stdout.flush()
            return
        layout = Table(
            title=title or None, box=box.SIMPLE_HEAD, show_header=show_header, pad_edge=False, title_justify="left"
        )
        cells = [[f(v) for f, v in zip(formats, row, strict=True)] for row in rows]
        for k, name in enumerate(columns):
            # Wrap within the cell, never cut: a column keeps its longest single word whole.
            longest = max([len(c[k]) for c in cells if " " not in c[k]] + [0])
            cap = 24 if k == 0 else 16  # a code (an issue, an id) stays whole; prose wraps
            layout.add_column(name, overflow="fold", min_width=min(longest, cap) or None)
        for row in cells:
            layout.add_row(*row)
        self.console.print(layout)

    def close(self) -> None:
        if self.fmt == "json":
            sys.stdout.write(json.dumps(self._tables, indent=2, default=str) + "\n")
            sys.stdout.flush()
