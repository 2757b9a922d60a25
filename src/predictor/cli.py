"""The `predictor` command line: each command is a thin call into one stage of the pipeline."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from predictor import logs

app = typer.Typer(
    name="predictor",
    help="Repeat-contact predictor: simulate, validate and label contact logs; train, register and score models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
err = Console(stderr=True)
log = logging.getLogger("predictor")

MappingOption = Annotated[
    Path | None,
    typer.Option("--mapping", "-m", help="YAML column mapping for a foreign export (see data/mappings/)."),
]
TimezoneOption = Annotated[
    str | None,
    typer.Option("--assume-timezone", help="Zone of timestamps written without one, e.g. UTC."),
]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logs.setup(verbose)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Contact log to write (.csv, .parquet or .jsonl).")] = Path(
        "data/contacts.csv"
    ),
    n_contacts: Annotated[int, typer.Option("--n", help="Number of contacts.", min=10)] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same log.")] = 7,
    days: Annotated[int, typer.Option(help="Length of the period in days.", min=14)] = 180,
    repeat_rate: Annotated[float, typer.Option(help="Target share of contacts repeated within 7 days.")] = 1 / 3,
) -> None:
    """Generate a synthetic contact log, with the ground truth in a separate file beside it.

    The ground truth (<name>.truth.parquet) holds the simulator's own repeat probabilities; only the
    oracle in evaluation reads it.
    """
    from predictor.simulate import SimulatorConfig, write
    from predictor.simulate import simulate as run

    config = SimulatorConfig(n_contacts=n_contacts, seed=seed, days=days, repeat_rate=repeat_rate)
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("simulating contacts", total=None)
        result = run(config, progress=lambda k: progress.advance(task, k))
    contacts_path, truth_file = write(result, out)
    console.print(
        f"wrote {len(result.contacts):,} contacts to [bold]{contacts_path}[/] and the ground truth to "
        f"{truth_file} in {time.perf_counter() - started:.1f} s"
    )


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="Contact log (.csv, .parquet or .jsonl).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write the valid contacts (.parquet/.csv).")
    ] = None,
    mapping: MappingOption = None,
    assume_timezone: TimezoneOption = None,
    strict: Annotated[bool, typer.Option(help="Exit with status 1 if any row is rejected.")] = False,
) -> None:
    """Check a contact log row by row; report what was rejected and why.

    Rejected rows are written to <out>.rejected.csv (or <file>.rejected.csv) with their row number,
    contact_id, field and reason. Accepted + rejected always equals the rows read.
    """
    from predictor.schema import write_table

    result = _load(path, mapping, assume_timezone)
    console.print(
        f"[bold]{path}[/]: {result.n_input:,} rows read, {result.n_accepted:,} accepted, "
        f"{result.n_rejected_rows:,} rejected"
    )
    if result.n_rejected_rows:
        table = Table("field", "reason", "rows", title="Rejected rows by reason")
        for row in result.counts_by_reason().itertuples(index=False):
            table.add_row(row.field, row.reason, f"{row.rows:,}")
        console.print(table)
        target = (out or path).with_suffix(".rejected.csv")
        write_table(result.rejections, target)
        console.print(f"rejections written to {target}")
    if out is not None:
        write_table(result.contacts, out)
        console.print(f"valid contacts written to {out}")
    if strict and result.n_rejected_rows:
        raise typer.Exit(1)


@app.command()
def labels(
    path: Annotated[Path, typer.Argument(help="Contact log (.csv, .parquet or .jsonl).")],
    window_days: Annotated[float | None, typer.Option(help="Repeat window in days (default from config).")] = None,
    mapping: MappingOption = None,
    assume_timezone: TimezoneOption = None,
) -> None:
    """Derive repeat labels and print the repeat rate, explicit/implicit split and censoring."""
    from predictor.config import get_settings
    from predictor.labels import derive, summarize

    result = _load(path, mapping, assume_timezone)
    config = get_settings().labels
    if window_days is not None:
        config = config.model_copy(update={"repeat_window_days": window_days})
    summary = summarize(derive(result.contacts, config))
    print_label_summary(summary, config.repeat_window_days)


def print_label_summary(summary, window_days: float) -> None:  # noqa: ANN001 - LabelSummary, imported lazily
    console.print(
        f"{summary.contacts:,} contacts; {summary.censored:,} still inside their {window_days:g}-day window "
        f"(censored: not counted as 'no repeat'); {summary.labelled:,} with a known outcome."
    )
    console.print(
        f"repeat rate within {window_days:g} days: [bold]{summary.repeat_rate:.1%}[/] "
        f"(FCR {1 - summary.repeat_rate:.1%}); explicit (same issue) {summary.explicit_share:.1%}, "
        f"implicit {1 - summary.explicit_share:.1%} of repeats"
    )
    for title, frame in (("By issue", summary.by_issue), ("By channel", summary.by_channel)):
        table = Table(frame.index.name, "contacts", "censored", "repeat rate", "explicit share", title=title)
        for key, row in frame.iterrows():
            table.add_row(
                str(key),
                f"{int(row.contacts):,}",
                f"{int(row.censored):,}",
                f"{row.repeat_rate:.1%}",
                f"{row.explicit_share:.1%}",
            )
        console.print(table)


def _load(path: Path, mapping: Path | None, assume_timezone: str | None):  # noqa: ANN202
    from predictor.schema import SchemaError, load_contacts

    try:
        return load_contacts(path, mapping, assume_timezone)
    except SchemaError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


if __name__ == "__main__":  # pragma: no cover
    app()
