"""What the command line prints as tables: laid out for a terminal of any width, or as CSV or JSON.

A table is given as rows of raw values (what CSV and JSON carry) with a formatter per column for people
(thousands separators, percentages, "-" for a missing value: never "nan"). In a terminal, columns wrap within
their cells rather than cut a value short, so an 80-column terminal shows every value whole.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table

Format = Literal["table", "csv", "json"]
_NUMBER = re.compile(r"[-+]?[\d,.]*\d[%]?|-|")
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
        for name, width in zip(columns, self._widths(columns, cells), strict=True):
            layout.add_column(name, overflow="fold", width=width)
        for row in cells:
            layout.add_row(*row)
        self.console.print(layout)

    def _widths(self, columns: Sequence[str], cells: list[list[str]]) -> list[int | None]:
        """Each column's width when the table would not fit the terminal (None: it fits as it is). The widest
        columns give way first, down to their longest single word (a code or an id stays whole, prose and
        headers wrap), and below that only if they must (then values fold onto a second line)."""
        natural = [max([len(c[k]) for c in cells] + [len(name)]) for k, name in enumerate(columns)]
        # Rich's overhead: each column's padding (2), the separators between them (1) and the two edges.
        budget = self.console.width - 3 * len(columns)
        if sum(natural) <= budget:
            return [None] * len(columns)
        floor = [
            max([len(c[k]) for c in cells if " " not in c[k]] + [max((len(w) for w in name.split()), default=1)])
            for k, name in enumerate(columns)
        ]
        # Numbers never fold (a figure split over two lines misreads); words may, as a last resort.
        numeric = [all(_NUMBER.fullmatch(c[k]) for c in cells) for k in range(len(columns))]
        last = [n if is_number else 4 for n, is_number in zip(natural, numeric, strict=True)]
        widths = list(natural)
        for limit in (floor, last):
            while sum(widths) > budget:
                room = [w - m for w, m in zip(widths, limit, strict=True)]
                if max(room) <= 0:
                    break
                widths[room.index(max(room))] -= 1
        return widths

    def close(self) -> None:
        if self.fmt == "json":
            sys.stdout.write(json.dumps(self._tables, indent=2, default=str) + "\n")
            sys.stdout.flush()
