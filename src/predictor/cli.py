"""The `predictor` command line: each command is a thin call into one stage of the pipeline."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from predictor import logs

app = typer.Typer(
    name="predictor",
    help="Repeat-contact predictor: simulate, validate and label contact logs; train, register and score models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
STDOUT = Console(stderr=False)
console = STDOUT  # stdout, or stderr beside a command's CSV or JSON (``_output``)
err = Console(stderr=True)
log = logging.getLogger("predictor")

MappingOption = Annotated[
    Path | None,
    typer.Option(
        "--mapping",
        "-m",
        help="YAML column mapping of a foreign export, or a shipped one by name: zendesk, freshdesk, "
        "salesforce_case, genesys_conversations (`predictor mapping list`; `predictor mapping draft FILE`).",
    ),
]
TimezoneOption = Annotated[
    str | None,
    typer.Option("--assume-timezone", help="Zone of timestamps written without one, e.g. UTC."),
]
SchedulerOption = Annotated[
    str | None, typer.Option(help="Run on the Dask cluster at this scheduler address (tcp://host:8786).")
]
LocalClusterOption = Annotated[
    int, typer.Option(help="Run on a local Dask cluster with N worker processes (0: in-process).", min=0)
]
AsOfOption = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        help="The log holds every opening up to this time (its extraction time, e.g. 2026-06-30T23:59Z). "
        "Default: the last opening, or earlier for an export of closed tickets.",
    ),
]
MetricsJsonOption = Annotated[
    Path | None, typer.Option("--metrics-json", help="Also write the run's figures to this JSON file.")
]
ModelNameOption = Annotated[
    str | None,
    typer.Option(
        "--model-name",
        help="Registered model of this dataset or deployment: its own champion, gate and plan "
        "(default PREDICTOR_REGISTRY__MODEL_NAME, or repeat-contact-predictor).",
    ),
]
FormatOption = Annotated[
    str, typer.Option("--format", "-f", help="How tables are printed: table (for people), csv or json (for scripts).")
]
REJECTED_SHARE_WARNING = 0.05  # more rejected rows than this: say the labels of the rest may be skewed
PartitionsOption = Annotated[
    int | None, typer.Option(help="Customer partitions (default: two per worker, at most 100k contacts each).")
]


_out = None  # the current command's Output (tables as text, CSV or JSON)


def _output(fmt: str):  # noqa: ANN202 - predictor.output.Output
    """The tables of this command in ``fmt``; beside CSV or JSON every other line goes to stderr."""
    global console, _out
    from predictor.output import FORMATS, Output

    if fmt not in FORMATS:
        _fail(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    # Set per command: several commands in one process (a test's runner) must not inherit the last one's.
    console = STDOUT if fmt == "table" else err
    _out = Output(fmt, console, err)  # type: ignore[arg-type]
    return _out


def _tables():  # noqa: ANN202 - predictor.output.Output
    return _out if _out is not None else _output("table")  # called outside a command (a test, a notebook)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"predictor {version('repeat-contact-predictor')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    show_version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    logs.setup(verbose)
    _output("table")  # every command starts with tables for people; --format may change it


@app.command()
def info(model_name: ModelNameOption = None, fmt: FormatOption = "table") -> None:
    """Where everything is (the home and every path under it), the registered model and its champion, the
    embedding backend, and the versions installed."""
    from importlib.metadata import PackageNotFoundError, version

    from predictor.config import sqlite_file
    from predictor.registry.tracking import registered_versions

    out = _output(fmt)
    settings = _settings(model_name=model_name)
    table = _Rows()
    table.add_row("home", str(settings.home))
    table.add_row("MLflow registry", settings.registry.tracking_uri)
    table.add_row("artifacts", str(settings.registry.artifact_root))
    table.add_row("model name", settings.registry.model_name)
    database = sqlite_file(settings.registry.tracking_uri)
    if database is not None and not database.exists():
        table.add_row("versions", "none yet (no registry file): predictor train LOG")
    else:
        versions = registered_versions(settings.registry)
        champion = next((v for v, aliases in versions if "champion" in aliases), None)
        table.add_row("champion", f"version {champion}" if champion else "none")
        table.add_row("versions", ", ".join(v for v, _ in versions) or "none")
    table.add_row("embedding", f"{settings.embedding.backend}, {settings.embedding.model_path or 'bundled MiniLM'}")
    table.add_row("embedding cache", str(settings.embedding.cache_dir))
    table.add_row("contact store", settings.service.store_url)
    table.add_row("follow-up plan", str(settings.service.plan_path))
    installed = []
    for package in ("repeat-contact-predictor", "lightgbm", "scikit-learn", "mlflow", "bentoml", "torch",
                    "sentence-transformers", "model2vec", "pandas"):  # fmt: skip
        try:
            installed.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            installed.append(f"{package} (not installed)")
    table.add_row("versions installed", ", ".join(installed))
    out.table("Where everything is", ["what", "where"], table.rows, show_header=False)
    out.close()


mapping_app = typer.Typer(help="Column mappings of foreign exports: the shipped ones, and a draft for yours.")
app.add_typer(mapping_app, name="mapping")


@mapping_app.command("list")
def mapping_list() -> None:
    """The shipped mappings (pass one by name to --mapping)."""
    from predictor.contacts.mapping import SHIPPED, shipped

    for name in shipped():
        first = (SHIPPED / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        console.print(f"[bold]{name}[/]: {first}")


@mapping_app.command("draft")
def mapping_draft(
    path: Annotated[Path, typer.Argument(help="A CSV export (its header and a sample of rows are read).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the mapping here (default: print it).")] = None,
    rows: Annotated[int, typer.Option(help="Rows sampled for the guesses.", min=1)] = 500,
) -> None:
    """Draft a column mapping for an export: best guesses for every field, and a TODO where it cannot know."""
    from predictor.contacts.draft import draft
    from predictor.contacts.mapping import SchemaError

    try:
        drafted = draft(path, rows)
    except SchemaError as exc:
        _fail(str(exc))
    if out is None:
        console.print(drafted.yaml, markup=False, highlight=False)
    else:
        _check_suffix(out, (".yaml", ".yml"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(drafted.yaml)
        console.print(f"mapping drafted to [bold]{out}[/]: {len(drafted.fields)} fields found")
    if drafted.todos:
        err.print(f"{len(drafted.todos)} TODO(s) to decide:")
        for todo in drafted.todos:
            err.print(f"  - {todo}")
    err.print(f"then: predictor validate {path} --mapping {out or 'MAPPING.yaml'}")


follow_ups_app = typer.Typer(help="Follow-ups the ticketing system sent, reported back (the experiment's treated arm).")
app.add_typer(follow_ups_app, name="follow-ups")
StoreUrlOption = Annotated[
    str | None,
    typer.Option("--store-url", help="SQLAlchemy URL of the contact store (default PREDICTOR_SERVICE__STORE_URL)."),
]


def _store(settings, store_url: str | None):  # noqa: ANN001, ANN202 - Settings, ContactStore (lazily)
    """The contact store named (or the service's), which must exist already: reading one creates nothing."""
    from predictor.config import sqlite_file
    from predictor.contacts.store import ContactStore, PseudonymKeyError

    url = store_url or settings.service.store_url
    database = sqlite_file(url)
    if database is not None and not database.exists():
        _fail(f"no contact store at {database}: the service creates it when it scores (or give --store-url)")
    try:
        return ContactStore(url, pseudonym_key=_pseudonym_key(settings))
    except PseudonymKeyError as exc:
        _fail(str(exc))
    except Exception as exc:  # a wrong URL, a database that is down: one line, not a traceback
        _fail(f"cannot open the contact store {url}: {str(exc).splitlines()[0]}")


@follow_ups_app.command("import")
def follow_ups_import(
    path: Annotated[Path, typer.Argument(help="CSV, Parquet or JSONL: contact_id, sent_at, channel[, template].")],
    store_url: StoreUrlOption = None,
    assume_timezone: TimezoneOption = None,
    rejected_out: Annotated[
        Path | None, typer.Option("--rejected-out", help="Write the rejected rows, with their reasons, here (CSV).")
    ] = None,
) -> None:
    """Record follow-ups sent for scored contacts, from a ticketing system's export: each once, each row
    recorded or rejected with its reason."""
    from predictor.contacts.mapping import SchemaError
    from predictor.loop.followups import FollowUpFileError, import_file

    if assume_timezone:
        _check_zone(assume_timezone)
    if rejected_out is not None:
        _check_suffix(rejected_out, (".csv",))
    settings = _settings()
    store = _store(settings, store_url)
    try:
        result = import_file(path, store, assume_timezone)
    except (SchemaError, FollowUpFileError) as exc:
        _fail(str(exc))
    console.print(
        f"{result.rows:,} rows: {result.recorded:,} follow-ups recorded, {result.replayed:,} already recorded, "
        f"{len(result.rejected):,} rejected"
    )
    if result.held_out:
        err.print(
            f"[yellow]warning:[/] {result.held_out:,} recorded follow-ups went to held-out customers (told act: "
            "false): they are counted as sent, and weaken the measured effect",
            soft_wrap=True,
        )
    if len(result.rejected):
        counts = result.rejected["reason"].value_counts()
        for reason, n in counts.items():
            err.print(f"  {n:,} x {reason}", soft_wrap=True, markup=False)
        for row in result.rejected.head(5).itertuples(index=False):
            err.print(f"  row {row.row}: {row.reason}", soft_wrap=True, markup=False)
        if rejected_out is not None:
            rejected_out.parent.mkdir(parents=True, exist_ok=True)
            result.rejected.to_csv(rejected_out, index=False)
            err.print(f"rejected rows written to {rejected_out}")
    if result.rejected is not None and len(result.rejected) == result.rows:
        _fail(f"no row of {path} was recorded: see the reasons above")


@app.command()
def outcomes(
    store_url: StoreUrlOption = None,
    json_out: MetricsJsonOption = None,
    uplift: Annotated[
        bool,
        typer.Option(help="Also fit an uplift model on the arms and judge it against risk ranking (logged to MLflow)."),
    ] = False,
    min_per_arm: Annotated[int, typer.Option(help="Closed windows per arm the uplift model needs.", min=20)] = 200,
    model_name: ModelNameOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Is it working? Live model quality on scored contacts whose window has closed, and what the follow-ups
    prevented: held-out vs treated repeat rates with 95% intervals (intention to treat and as treated)."""
    import json

    from predictor.loop.outcomes import realised, summarise

    output = _output(fmt)
    if json_out is not None:
        _check_suffix(json_out, (".json",))
    settings = _settings(model_name=model_name)
    store = _store(settings, store_url)
    with _progress() as progress:
        task = progress.add_task("deriving outcomes from the contact store", total=None)
        frame, end = realised(store, settings.labels)  # read once: the outcomes and the uplift model share it
        result = summarise(frame, end)
        ranked = None
        if uplift:
            from predictor.loop.uplift import evaluate_store

            _require_model(settings)
            progress.update(task, description="fitting the uplift model on the experiment's arms")
            ranked = evaluate_store(store, settings, min_per_arm, frame=frame)
    _print_outcomes(result)
    figures = result.as_dict()
    if ranked is not None:
        from predictor.output import percent

        figures["uplift"] = ranked.as_dict()
        if ranked.fitted:
            console.print(
                f"uplift model (learnt on {ranked.train:,}, judged on {ranked.evaluated:,} later contacts): Qini "
                f"{ranked.qini_uplift:.4f} vs {ranked.qini_risk:.4f} ranking by risk; prevented in the top 30%: "
                f"{percent(ranked.uplift_at_top_uplift)} vs {percent(ranked.uplift_at_top_risk)}. {ranked.reason} "
                f"(MLflow run {ranked.run_id})",
            )
        else:
            console.print(f"no uplift model: {ranked.reason}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(figures, indent=2, default=str))
        console.print(f"figures written to {json_out}")
    output.close()


@app.command("simulate-deployment")
def simulate_deployment(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the run: registry, store, service log, JSON.")
    ] = (Path("data/deployment")),
    n: Annotated[int, typer.Option(help="Contacts simulated in all.", min=500)] = 6000,
    seed: Annotated[int, typer.Option(help="Seed of the world and of its draws.")] = 7,
    days: Annotated[int, typer.Option(help="Days simulated.", min=30)] = 120,
    train_days: Annotated[int, typer.Option(help="The model learns from the first N days; the rest is deployed.")] = 60,
    holdout_share: Annotated[float, typer.Option(help="Share of customers held out.", min=0.01, max=0.99)] = 0.5,
    prevent_implicit: Annotated[float, typer.Option(help="Chance a follow-up prevents an implicit repeat.")] = 0.5,
    prevent_explicit: Annotated[float, typer.Option(help="Chance a follow-up prevents an explicit repeat.")] = 0.3,
    prompt: Annotated[float, typer.Option(help="Chance a follow-up prompts a contact of its own.")] = 0.05,
    compliance: Annotated[float, typer.Option(help="Share of due follow-ups the ticketing system sends.")] = 0.9,
) -> None:
    """Deploy a model on a simulated world with a known follow-up effect: the real service scores every close
    over HTTP, follow-ups go back through /follow_ups, the world reacts; then `outcomes` measures the store
    and the estimate is set against the truth (written to OUT/deployment.json)."""
    import json

    from predictor.loop.deployment import DeploymentConfig, Effect, deploy, prepare

    for name, value in (("prevent-implicit", prevent_implicit), ("prevent-explicit", prevent_explicit),
                        ("prompt", prompt), ("compliance", compliance)):  # fmt: skip
        if not 0 <= value <= 1:
            _fail(f"--{name} must lie between 0 and 1, not {value}")
    if not 0 < train_days < days - 14:
        _fail(f"--train-days must leave at least 14 of the {days} days to deploy on")
    config = DeploymentConfig(n_contacts=n, seed=seed, days=days, train_days=train_days, holdout_share=holdout_share)
    effect = Effect(prevent_implicit, prevent_explicit, prompt, compliance)
    out.mkdir(parents=True, exist_ok=True)
    with _progress() as progress:
        task = progress.add_task("simulating and training the deployed model", total=None)
        prepared = prepare(config, out)
        progress.update(task, description="scoring the deployment over HTTP", total=len(prepared.live), completed=0)
        result = deploy(prepared, effect, out / "run", lambda done, _: progress.update(task, completed=done))
    _print_outcomes(result.outcomes)
    summary = result.as_dict()
    estimate = summary["estimated_itt"]
    if estimate is not None:
        console.print(
            f"true effect (held out minus treated): {result.true_itt * 100:+.1f} pts over {result.counted:,} "
            f"contacts; measured {estimate['estimate'] * 100:+.1f} pts ({estimate['low'] * 100:+.1f} to "
            f"{estimate['high'] * 100:+.1f}): {'covered' if summary['covered'] else 'NOT covered'}"
        )
    console.print(
        f"{result.scored:,} contacts scored, {result.sent:,} follow-ups sent, {result.prevented:,} repeats prevented "
        f"in the world, {result.prompted:,} contacts prompted"
    )
    (out / "deployment.json").write_text(json.dumps({**summary, "outcomes": result.outcomes.as_dict()}, indent=2))
    console.print(f"figures written to {out / 'deployment.json'}")


def _print_outcomes(result) -> None:  # noqa: ANN001 - loop.outcomes.Outcomes
    from predictor.output import count, percent, text

    console.print(result.data_end.describe())
    q = result.quality
    console.print(
        f"scored {result.scored:,} contacts; {result.closed:,} with a closed window"
        + (
            f": AUC {q['roc_auc']:.3f}, ECE {q['ece']:.3f}, predicted {percent(q['predicted_rate'])} "
            f"vs realised {percent(q['realised_rate'])}"
            if result.closed and q.get("roc_auc") == q.get("roc_auc")
            else ""
        ),
    )
    if len(result.by_band):
        rows = [[str(r.risk_band), r.contacts, r.predicted_rate, r.realised_rate, r.roc_auc]
                for r in result.by_band.itertuples(index=False)]  # fmt: skip
        _tables().table(
            "Live quality by risk band", ["risk band", "contacts", "predicted", "realised", "ROC AUC"], rows,
            [text, count, percent, percent, lambda v: "-" if v != v else f"{v:.3f}"],
        )  # fmt: skip
    if result.experiment is None:
        console.print("no contact counts in a follow-up experiment yet (no follow-up was due)")
    else:
        console.print(
            f"experiment '{result.experiment}': {result.counted:,} contacts with a follow-up due, "
            f"{percent(result.held_out_share)} held out; {result.sent:,} follow-ups reported sent"
            + (f" ({result.sent_to_held_out:,} to held-out customers)" if result.sent_to_held_out else ""),
        )
    if result.itt is not None:
        itt = result.itt
        d = itt.difference
        rows = []
        for label, c in (("held out vs treated (ITT)", itt), ("not sent vs sent (not randomised)", result.as_treated),
                         ("treated vs held out, 48 h", result.early)):  # fmt: skip
            if c is not None:
                rows.append([label, c.n_first, c.n_second, c.rate_first, c.rate_second, c.difference.estimate,
                             c.difference.low, c.difference.high])  # fmt: skip
        points = lambda v: "-" if v != v else f"{v * 100:+.1f}"  # noqa: E731
        _tables().table(
            "Prevention (difference in points, 95% interval)",
            ["comparison", "n first", "n second", "rate first", "rate second", "diff", "low", "high"],
            rows, [text, count, count, percent, percent, points, points, points],
        )  # fmt: skip
        console.print(
            result.verdict()
            + (
                f"; ~{result.needed:,} closed windows in all would settle it at this effect"
                if result.needed and not d.excludes_zero()
                else ""
            ),
        )
        console.print(
            f"{result.prompted_after_send:,} repeats came within 48 h after a sent follow-up "
            "(some may be replies to it)"
        )
    for note in result.notes:
        console.print(f"note: {note}")


class _Rows:
    """Rows gathered as ``Table.add_row`` would take them, for ``Output.table``."""

    def __init__(self) -> None:
        self.rows: list[list[object]] = []

    def add_row(self, *values: object) -> None:
        self.rows.append(list(values))


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
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Contact log to write (.csv, .parquet, .jsonl); default HOME/data/contacts.csv."
        ),
    ] = None,
    n_contacts: Annotated[int, typer.Option("--n", help="Number of contacts.", min=10)] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same log.")] = 7,
    days: Annotated[int, typer.Option(help="Length of the period in days.", min=14)] = 180,
    repeat_rate: Annotated[float, typer.Option(help="Target share of contacts repeated within 7 days.")] = 1 / 3,
    export: Annotated[
        str, typer.Option(help="'all' contacts, or 'closed-only': those still open at the end are not exported.")
    ] = "all",
    ticket_days: Annotated[
        float, typer.Option(help="E-mail handled as tickets, open this many days (median); 0: closed when handled.")
    ] = 0.0,
    drift: Annotated[
        float, typer.Option(help="Relative change of the repeat rate from start to end (-0.7: falls by 70%).")
    ] = 0.0,
    language: Annotated[
        str,
        typer.Option(
            help="Language of the transcripts: en, ru, be, sr (Cyrillic and Latin script), or mixed (all four)."
        ),
    ] = "en",
) -> None:
    """Generate a synthetic contact log, with the ground truth in a separate file beside it.

    The ground truth (<name>.truth.parquet) holds the simulator's own repeat probabilities; only the
    oracle in evaluation reads it.
    """
    from predictor.contacts.simulate import LANGUAGES, SimulatorConfig, write
    from predictor.contacts.simulate import simulate as run

    if export not in ("all", "closed-only"):
        _fail(f"--export must be 'all' or 'closed-only', not {export!r}")
    if ticket_days < 0 or drift <= -1:
        _fail("--ticket-days must be at least 0 and --drift greater than -1")
    if language not in (*LANGUAGES, "mixed"):
        _fail(f"--language must be one of {', '.join(LANGUAGES)} or mixed, not {language!r}")
    out = out or _settings().path("data/contacts.csv")
    _check_suffix(out, (".csv", ".parquet", ".jsonl"))
    config = SimulatorConfig(
        n_contacts=n_contacts,
        seed=seed,
        days=days,
        repeat_rate=repeat_rate,
        export=export,  # type: ignore[arg-type]
        ticket_days=ticket_days,
        drift=drift,
        language=language,
    )
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
    fmt: FormatOption = "table",
) -> None:
    """Check a contact log row by row; report what was rejected and why.

    Rejected rows are written to <out>.rejected.csv (or <file>.rejected.csv) with their row number,
    contact_id, field and reason. Accepted + rejected always equals the rows read.
    """
    from predictor.contacts.schema import write_table

    _output(fmt)
    result = _load(path, mapping, assume_timezone, allow_empty=True)
    console.print(
        f"[bold]{path}[/]: {result.n_input:,} rows read, {result.n_accepted:,} accepted, "
        f"{result.n_rejected_rows:,} rejected"
    )
    from predictor.output import count, text

    for title, shown, counts in (
        (
            "Kept with an optional field left blank",
            len(result.warnings),
            lambda: result.counts_by_reason(warnings=True),
        ),
        ("Rejected rows by reason", result.n_rejected_rows, result.counts_by_reason),
    ):
        if shown:
            rows = [[r.field, r.reason, r.rows] for r in counts().itertuples(index=False)]
            _tables().table(title, ["field", "reason", "rows"], rows, [text, text, count])
    if result.n_rejected_rows:
        target = (out or path).with_suffix(".rejected.csv")
        write_table(result.rejections, target)
        console.print(f"rejections written to {target}")
    if not result.n_accepted:
        _fail(_all_rejected(path, result))
    if out is not None:
        _check_suffix(out, (".csv", ".parquet", ".jsonl"))
        write_table(result.contacts, out)
        console.print(f"valid contacts written to {out}")
    if _tables().fmt != "table":  # the counts above, as data
        counts_rows = [["read", result.n_input], ["accepted", result.n_accepted], ["rejected", result.n_rejected_rows]]
        _tables().table("Rows", ["rows", "count"], counts_rows, [text, count])
    _tables().close()
    if strict and result.n_rejected_rows:
        raise typer.Exit(1)


@app.command()
def labels(
    path: Annotated[Path, typer.Argument(help="Contact log (.csv, .parquet or .jsonl).")],
    window_days: Annotated[
        float | None, typer.Option(help="Repeat window in days (default from config).", min=0.01)
    ] = None,
    mapping: MappingOption = None,
    assume_timezone: TimezoneOption = None,
    as_of: AsOfOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Derive repeat labels and print the repeat rate, explicit/implicit split and censoring."""
    from predictor.contacts.labels import data_end, derive, summarize

    out = _output(fmt)
    result = _load(path, mapping, assume_timezone)
    config = _settings(as_of).labels
    if window_days is not None:
        config = config.model_copy(update={"repeat_window_days": window_days})
    end = data_end(result.contacts, config)
    _print_data_end(end, config.repeat_window_days)
    summary = summarize(derive(result.contacts, config, end.at))
    print_label_summary(summary, config.repeat_window_days)
    out.close()


@app.command()
def train(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="LOG",
            help="Contact log to train on (.csv, .parquet or .jsonl); on a cluster also a directory of exports "
            "or a quoted glob.",
        ),
    ],
    mapping: MappingOption = None,
    assume_timezone: TimezoneOption = None,
    oracle_truth: Annotated[
        Path | None,
        typer.Option(help="Simulator ground truth (<log>.truth.parquet): adds the oracle's figures to the evaluation."),
    ] = None,
    text: Annotated[bool, typer.Option(help="Use transcript embeddings (off: metadata + history only).")] = True,
    ablation: Annotated[
        bool, typer.Option(help="Also fit a model blind to how conversations end (in-process only).")
    ] = True,
    register: Annotated[bool, typer.Option(help="Log to MLflow, register, and apply the promotion gate.")] = True,
    plots_dir: Annotated[
        Path | None, typer.Option(help="Where evaluation plots are written (default HOME/models/plots).")
    ] = None,
    scheduler: SchedulerOption = None,
    local_cluster: LocalClusterOption = 0,
    partitions: PartitionsOption = None,
    as_of: AsOfOption = None,
    metrics_json: MetricsJsonOption = None,
    model_name: ModelNameOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Train the repeat, next-issue and timing models on a time split; compare with baselines; register.

    The champion alias moves only if the new version is at least as good as the current champion on the
    same test slice (AUC within tolerance, calibration within bound); otherwise the run says why. With
    --scheduler or --local-cluster the same stages run on Dask partitions of the log and the boosters
    train with lightgbm.dask; the log never has to fit in this process's memory.
    """
    _output(fmt)
    settings = _settings(as_of, model_name)
    settings = settings.model_copy(update={"compute": _compute(settings, scheduler, local_cluster, partitions)})
    plots_dir = plots_dir or settings.path("models/plots")
    if metrics_json is not None:
        _check_suffix(metrics_json, (".json",))
    truth = None
    if oracle_truth is not None:
        from predictor.model.evaluate import load_truth

        truth = load_truth(oracle_truth)
    started = time.perf_counter()
    if settings.compute.scheduler or settings.compute.local_cluster:
        _train_on_cluster(
            str(path), settings, truth, text, register, plots_dir, mapping, assume_timezone, started, metrics_json
        )
        return
    from predictor.training.train import TrainingDataError, fit

    result_in = _load(path, mapping, assume_timezone)
    with _progress() as progress:
        task = progress.add_task("training", total=None)
        try:
            result = fit(
                result_in.contacts,
                settings,
                use_text=text,
                ablation=ablation,
                oracle=truth,
                plots_dir=plots_dir,
                stage=lambda name: progress.update(task, description=f"training: {name}"),
            )
        except TrainingDataError as exc:
            progress.stop()
            _fail(str(exc))
        progress.update(task, description="training: done")
    print_training_result(result)
    console.print(f"trained in {time.perf_counter() - started:.1f} s; plots in {plots_dir}")
    registration = None
    if register:
        import tempfile

        from predictor.registry.tracking import PLAN_FILE, log_and_register

        with tempfile.TemporaryDirectory() as tmp:  # the plan lives with the model version, nowhere else
            plan_file = _mine_plan(result_in.contacts, settings, Path(tmp) / PLAN_FILE)
            registration = log_and_register(result, settings, result_in.contacts, plan=plan_file, dataset=str(path))
        _print_registration(registration, settings)
    else:
        console.print("--no-register: nothing registered, no plan written (predictor plan LOG writes one)")
    _write_metrics(metrics_json, result, registration)
    _tables().close()


def _write_metrics(path: Path | None, result, registration) -> None:  # noqa: ANN001 - TrainingResult, Registration
    if path is None:
        return
    import json

    from predictor.training.train import metrics_summary

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics_summary(result, registration), indent=2))
    console.print(f"figures written to {path}")


def _teams(path: Path) -> dict[str, str]:
    """agent_id -> team from a CSV (the two columns named so); a missing file or column: one line, exit 2."""
    import pandas as pd

    if not path.exists():
        _fail(f"{path}: no such file (a CSV with the columns agent_id and team)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # unreadable: say so in one line
        _fail(f"{path}: cannot be read as CSV: {str(exc).splitlines()[0]}")
    if not {"agent_id", "team"} <= set(frame.columns):
        _fail(f"{path}: needs the columns agent_id and team (it has {', '.join(frame.columns) or 'none'})")
    frame = frame[frame["agent_id"].str.strip() != ""]
    return dict(zip(frame["agent_id"].str.strip(), frame["team"].str.strip().replace("", "no team"), strict=True))


def _dates(since: str | None, until: str | None):  # noqa: ANN202 - (pandas.Timestamp | None, ...), lazily
    """--since and --until as UTC times (a date without a zone is UTC); a bad one: one line, exit 2."""
    import pandas as pd

    parsed = []
    for name, value in (("--since", since), ("--until", until)):
        when = pd.to_datetime(value, errors="coerce") if value is not None else None
        if value is not None and pd.isna(when):
            _fail(f"{name} {value!r} is not a date: write it as 2026-03-01")
        parsed.append(
            None if when is None else when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
        )
    return tuple(parsed)


def _date_range(contacts, since, until):  # noqa: ANN001, ANN202 - pandas, lazily
    """Which contacts a date range (from ``_dates``) keeps, by close; an empty range: one line, exit 2."""
    keep = contacts["closed_at"].notna()
    if since is not None:
        keep &= contacts["closed_at"] >= since
    if until is not None:
        keep &= contacts["closed_at"] < until
    if not keep.any():
        _fail(f"no contact closed in the range {since or 'start'} to {until or 'end'}")
    return keep.to_numpy()


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2: the user's input, not the program, is wrong."""
    err.print(f"[red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


def _pseudonym_key(settings) -> str | None:  # noqa: ANN001 - Settings, imported lazily
    key = settings.service.pseudonym_key
    return key.get_secret_value() if key else None


def _settings(as_of: str | None = None, model_name: str | None = None):  # noqa: ANN202 - Settings, lazily
    """The configuration (a bad ``PREDICTOR_`` variable: one line naming it), with --as-of over the data end
    and --model-name over the registered model's name."""
    import re

    from pydantic import ValidationError

    from predictor.config import get_settings

    try:
        settings = get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = "PREDICTOR_" + "__".join(str(part) for part in first["loc"]).upper()
        _fail(f"{variable}: {first['msg']}")
    if model_name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}", model_name):
            _fail(f"--model-name {model_name!r}: letters, digits, '.', '_' and '-' only (at most 100)")
        registry = settings.registry.model_copy(update={"model_name": model_name})
        settings = settings.model_copy(update={"registry": registry})
    if as_of is None:
        return settings
    import pandas as pd

    try:
        when = pd.Timestamp(as_of)
    except ValueError:
        _fail(f"--as-of {as_of!r} is not a time: write it as 2026-06-30T23:59Z")
    if when.tzinfo is None:
        when = when.tz_localize("UTC")
    labels = settings.labels.model_copy(update={"as_of": when.to_pydatetime()})
    return settings.model_copy(update={"labels": labels})


def _print_data_end(end, window_days: float) -> None:  # noqa: ANN001 - labels.DataEnd
    console.print(end.describe())
    warning = end.warning(window_days)
    if warning:
        console.print(f"[yellow]{warning}[/]")


def _train_on_cluster(
    log_path: str,
    settings,  # noqa: ANN001 - Settings, imported lazily
    truth,  # noqa: ANN001 - pandas.DataFrame | None
    text: bool,
    register: bool,
    plots_dir: Path,
    mapping: Path | None,
    assume_timezone: str | None,
    started: float,
    metrics_json: Path | None = None,
) -> None:
    from predictor.compute.cluster import connect
    from predictor.contacts.schema import SchemaError
    from predictor.training import cluster_train
    from predictor.training.train import TrainingDataError

    with connect(settings.compute) as client, _progress() as progress:
        task = progress.add_task(f"training on {_where(settings.compute)}", total=None)
        try:
            fitted = cluster_train.fit(
                log_path,
                settings,
                client,
                use_text=text,
                oracle=truth,
                plots_dir=plots_dir,
                mapping_path=mapping,
                assume_timezone=assume_timezone,
                stage=lambda name: progress.update(task, description=f"training on the cluster: {name}"),
            )
        except (SchemaError, TrainingDataError) as exc:
            progress.stop()
            _fail(str(exc))
        progress.update(task, description="training: done")
        progress.stop()
        _print_rejections(fitted.rejections, fitted.n_input)
        print_training_result(fitted.result)
        console.print(
            f"trained on {fitted.result.params['dask_workers']} Dask workers in {time.perf_counter() - started:.1f} s;"
            f" plots in {plots_dir}"
        )
        if register:
            import tempfile

            from predictor.registry.tracking import PLAN_FILE, log_and_register

            with tempfile.TemporaryDirectory() as tmp:  # the plan lives with the model version, nowhere else
                plan_file = _mine_plan(None, settings, Path(tmp) / PLAN_FILE, labelled=fitted.labelled)
                registration = log_and_register(
                    fitted.result, settings, fitted.example, score_test=fitted.score_test, plan=plan_file,
                    dataset=log_path,
                )  # fmt: skip
            _print_registration(registration, settings)
        _write_metrics(metrics_json, fitted.result, registration if register else None)


def _print_registration(reg, settings) -> None:  # noqa: ANN001 - Registration, Settings
    colour = "green" if reg.promoted else "yellow"
    console.print(f"registered {settings.registry.model_name} version {reg.version} (run {reg.run_id})")
    console.print(f"[{colour}]{reg.reason}[/]")


def _print_rejections(rejections, n_input: int) -> None:  # noqa: ANN001 - pandas.DataFrame
    rejected = rejections["row"].nunique() if len(rejections) else 0
    if not rejected:
        return
    by_reason = rejections.groupby(["field", "reason"]).size().sort_values(ascending=False)
    console.print(f"[yellow]{rejected:,} of {n_input:,} rows rejected:[/]")
    for (field_name, reason), count in by_reason.head(10).items():
        console.print(f"  {count:>7,}  {field_name}: {reason}")


def _compute(settings, scheduler: str | None, local_cluster: int, partitions: int | None):  # noqa: ANN001, ANN202
    """The configured compute setting, with the command line's choices over it."""
    chosen = {"scheduler": scheduler, "local_cluster": local_cluster or None, "partitions": partitions}
    return settings.compute.model_copy(update={k: v for k, v in chosen.items() if v})


def _where(compute) -> str:  # noqa: ANN001 - ComputeConfig
    return compute.scheduler or (f"a local cluster of {compute.local_cluster}" if compute.local_cluster else "")


@app.command()
def plan(
    path: Annotated[Path, typer.Argument(help="Contact log to mine (.csv, .parquet or .jsonl).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Plan file (YAML); default from config.")] = None,
    top: Annotated[int, typer.Option(help="How many primary issues (by repeat volume).", min=1)] = 15,
    min_cell: Annotated[int, typer.Option(help="Cells with fewer repeats are flagged as low volume.")] = 20,
    mapping: MappingOption = None,
    assume_timezone: TimezoneOption = None,
    as_of: AsOfOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Mine the next-issue-avoidance plan: which issues follow which, when, and the script for each.

    Writes a versioned YAML file for people to read and edit; issues without a script in the scripts file
    are listed as gaps to fill. The service reads the plan stored with its model version (`predictor train`
    mines and registers one with every version); this file only for versions registered without one.
    """
    output = _output(fmt)
    settings = _settings(as_of)
    result = _load(path, mapping, assume_timezone)
    _mine_plan(result.contacts, settings, out or settings.service.plan_path, top=top, min_cell=min_cell, show=True)
    output.close()


def _mine_plan(  # noqa: ANN202
    contacts,  # noqa: ANN001 - validated contacts (pandas), or None with ``labelled``
    settings,  # noqa: ANN001
    out: Path,
    top: int = 15,
    min_cell: int = 20,
    show: bool = False,
    labelled=None,  # noqa: ANN001 - labels.derive output, when the contacts are on a cluster
):
    from predictor.contacts.labels import derive
    from predictor.reports.plan import mine_to_file

    labelled = derive(contacts, settings.labels) if labelled is None else labelled
    mined, path = mine_to_file(labelled, settings.service, out, top_primaries=top, min_cell=min_cell)
    if show:
        from predictor.output import count, fixed, percent, text

        # Narrow enough for 80 columns: an explicit repeat is "same issue", hours to it as median/p75, the send
        # window in hours, "few" for a low-volume cell.
        rows = [
            [
                p["issue"] if k == 0 else "", p["repeats"] if k == 0 else None,
                "same issue" if s["repeat_type"] == "explicit" else s["issue"], s["share"],
                f"{s['median_hours']:.0f}/{s['p75_hours']:.0f}", s["send_within_hours"],
                "GAP" if s["script_missing"] else ("few" if s["low_volume"] else "yes"),
            ]
            for p in mined["primaries"]
            for k, s in enumerate(p["secondaries"][:3])
        ]  # fmt: skip
        _tables().table(
            f"Next-issue-avoidance plan {mined['version']}",
            ["primary", "repeats", "next issue", "share", "hours", "send", "script"],
            rows, [text, lambda v: "" if v is None else count(v), text, lambda v: percent(v, 0), text, fixed(0), text],
        )  # fmt: skip
    gaps = ", ".join(f"{g['primary']} -> {g['secondary']}" for g in mined["gaps"] if not g["low_volume"]) or "none"
    small = sum(g["low_volume"] for g in mined["gaps"])
    console.print(f"plan written to [bold]{path}[/]; scripts missing (gaps to fill): {gaps}")
    if small:
        console.print(f"({small} more gaps in low-volume cells are listed in the file)")
    return path


@app.command()
def report(
    path: Annotated[Path | None, typer.Argument(help="Contact log to report on (omit with --from-store).")] = None,
    from_store: Annotated[bool, typer.Option(help="Report on the service's contact store instead of a log.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file to write (default HOME/models/report.html).")
    ] = None,
    cost_per_contact: Annotated[float, typer.Option(help="Handling cost of one repeat contact.")] = 6.0,
    prevention_rate: Annotated[float, typer.Option(help="Share of reached repeats a follow-up prevents.")] = 0.3,
    top_share: Annotated[float, typer.Option(help="Share of contacts to follow up, highest risk first.")] = 0.1,
    follow_up_cost: Annotated[float, typer.Option(help="What sending one follow-up costs.", min=0)] = 0.5,
    currency: Annotated[str, typer.Option(help="Currency sign of the costs.")] = "€",
    target: Annotated[
        float | None, typer.Option(help="Target repeat rate, drawn on the trend (e.g. 0.25).", min=0, max=1)
    ] = None,
    teams: Annotated[
        Path | None, typer.Option(help="CSV of agent_id,team: a breakdown by team, and agents listed by team.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Report on contacts closed from this date (2026-03-01).")] = None,
    until: Annotated[
        str | None, typer.Option(help="... and before this date (history before it still counts).")
    ] = None,
    mapping: MappingOption = None,
    assume_timezone: TimezoneOption = None,
    as_of: AsOfOption = None,
    model_name: ModelNameOption = None,
) -> None:
    """Write the predicted-repeat report for managers (one HTML file, plots inside) and the high-risk CSV.

    Scores every contact with the champion model, point-in-time, and shows KPIs, the weekly trend (with
    contacts still inside their window marked), rates by issue, channel and agent with intervals, the
    high-risk list with follow-ups, the cost of repeats, and the next-issue-avoidance plan. From the store,
    also "Is it working?": live model quality and the follow-ups' prevention measured against the hold-out.
    """
    import pandas as pd
    import yaml

    from predictor.contacts.labels import data_end, derive
    from predictor.reports.plan import follow_up_plan
    from predictor.reports.report import ReportConfig, build, write

    settings = _settings(as_of, model_name)
    out = out or settings.path("models/report.html")
    _check_suffix(out, (".html", ".htm"))
    team_of = _teams(teams) if teams is not None else None
    start, end_date = _dates(since, until)  # a bad date is refused before the model is loaded
    working = None
    if from_store:
        from predictor.loop.outcomes import outcomes as measure

        store = _store(settings, None)
        contacts = store.all_contacts()
        working = measure(store, settings.labels) if len(contacts) else None
    elif path is not None:
        contacts = _load(path, mapping, assume_timezone).contacts
    else:
        _fail("give a contact log, or --from-store")
    if contacts.empty:
        _fail("no contacts to report on")
    with _progress() as progress:
        task = progress.add_task("scoring contacts with the champion", total=None)
        model, version, mined = _bundle(settings, settings.service.model_version, progress, with_plan=True)
        contacts = contacts.reset_index(drop=True)
        shown = _date_range(contacts, start, end_date)
        predictions = model.predict(contacts[shown].reset_index(drop=True), history=contacts)
        progress.update(task, description="building the report")
        plan_path = mined or settings.service.plan_path  # the plan of the version used, as the service reads it
        plan = yaml.safe_load(Path(plan_path).read_text()) if Path(plan_path).exists() else None
        followup = follow_up_plan(settings.service, mined)  # the service's own: the same channel and timing
        config = ReportConfig(
            cost_per_contact=cost_per_contact, prevention_rate=prevention_rate, top_share=top_share,
            follow_up_cost=follow_up_cost, currency=currency, target_repeat_rate=target,
        )  # fmt: skip
        end = data_end(contacts, settings.labels)
        labelled = derive(contacts, settings.labels, end.at)[shown].reset_index(drop=True)
        test_start = (model.metadata.get("boundaries") or {}).get("test_start")

        def explain(ids: list[str]) -> dict[str, list[str]]:
            # The reasons the API gives, for the contacts of the high-risk list.
            rows = contacts[contacts["contact_id"].isin(ids)].reset_index(drop=True)
            words = model.reasons(model.model_input(model.features(rows, contacts)))
            return {
                cid: [f"{r['description']} ({r['direction']})" for r in found]
                for cid, found in zip(rows["contact_id"], words, strict=True)
            }

        data = build(
            labelled, predictions, followup, plan, config, model_version=version, data_end=end, outcomes=working,
            unseen_from=pd.Timestamp(test_start) if test_start else None, explain=explain, teams=team_of,
        )  # fmt: skip
        html, csv = write(data, out)
    _print_data_end(end, settings.labels.repeat_window_days)
    console.print(f"report written to [bold]{html}[/]; high-risk list in {csv}")


@app.command()
def score(
    log_path: Annotated[
        str, typer.Argument(metavar="LOG", help="Contact log: a file, a directory of exports, or a quoted glob.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Predictions (Parquet; parts in a directory on a cluster); default HOME/predictions.parquet.",
        ),
    ] = None,
    scheduler: SchedulerOption = None,
    local_cluster: LocalClusterOption = 0,
    partitions: PartitionsOption = None,
    model_version: Annotated[str | None, typer.Option(help="Registered version (default: the champion).")] = None,
    store_url: Annotated[
        str | None,
        typer.Option(help="Also load the contacts into this contact store (SQLAlchemy URL) as the service's history."),
    ] = None,
    mapping: MappingOption = None,
    assume_timezone: TimezoneOption = None,
    model_name: ModelNameOption = None,
) -> None:
    """Score every contact of a log with the champion, point-in-time, and write the predictions.

    The same stage functions as everywhere; with --scheduler or --local-cluster they are mapped over
    customer partitions on Dask and the predictions are written partition by partition.
    """
    from predictor.compute.cluster import score_log
    from predictor.contacts.schema import SchemaError

    settings = _settings(model_name=model_name)
    out = out or settings.path("predictions.parquet")
    compute = _compute(settings, scheduler, local_cluster, partitions)
    if not (compute.scheduler or compute.local_cluster):  # on a cluster: a directory of parts
        _check_suffix(out, (".parquet",))
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("loading the model", total=None)
        model, version = _bundle(settings, model_version, progress)
        where = _where(compute)
        progress.update(task, description=f"scoring with version {version}" + (f" on {where}" if where else ""))
        try:
            summary = score_log(
                log_path, model, out, compute, mapping, assume_timezone, store_url, _pseudonym_key(settings)
            )
        except SchemaError as exc:
            progress.stop()
            _fail(str(exc))
        progress.update(task, description="scoring: done")
    console.print(
        f"scored {summary.scored:,} of {summary.n_input:,} contacts with version {version} in "
        f"{time.perf_counter() - started:.1f} s -> {summary.out}"
        + (f" ({summary.workers} Dask workers)" if summary.workers else "")
    )
    if summary.duplicates:
        console.print(f"[yellow]{summary.duplicates:,} rows repeat a contact_id seen in another file: scored once[/]")
    _print_rejections(summary.rejections, summary.n_input)
    if store_url:
        console.print(f"contacts loaded into the contact store at {store_url} (history for the service)")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Registered model version to make the champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded on the version).")] = "manual override",
    model_name: ModelNameOption = None,
) -> None:
    """Move the champion alias to VERSION by hand, bypassing the gate (recorded on the version)."""
    from predictor.registry.tracking import promote as move

    settings = _settings(model_name=model_name)
    try:
        move(version, settings, reason)
    except Exception as exc:  # MLflow says "not found" in its own words; give ours
        _fail(f"cannot promote version {version}: {exc}")
    console.print(f"champion -> {settings.registry.model_name} version {version} ({reason})")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps the service on this machine.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 3000,
    model_name: ModelNameOption = None,
) -> None:
    """Run the scoring service (BentoML) in the foreground; needs a champion (make demo, or predictor train).

    Without PREDICTOR_API_TOKEN it serves on loopback only, unless PREDICTOR_SERVICE__ALLOW_OPEN=true.
    """
    import os
    import sys

    from predictor.serving.devserver import ROOT, auth_notice, exposure_problem

    settings = _settings(model_name=model_name)
    # How it may serve first: that needs no model, and a refused address must not wait for one.
    token = settings.api_token.get_secret_value() if settings.api_token else None
    if problem := exposure_problem(host, token, settings.service.allow_open):
        _fail(problem)
    _require_model(settings)  # no model: say so here, not in the server's log
    if not (ROOT / "service" / "service.py").exists():
        _fail(f"no service/service.py under {ROOT}: run from the checkout that holds the service")
    if notice := auth_notice(settings.api_token):
        err.print(f"[yellow]{notice}[/]", soft_wrap=True)
    # The service runs from the checkout: it is told the home (and the model) this command resolved.
    os.environ["PREDICTOR_HOME"] = str(settings.home)
    os.environ["PREDICTOR_REGISTRY__MODEL_NAME"] = settings.registry.model_name
    os.environ.setdefault("BENTOML_HOME", str(settings.path("models/bentoml")))  # not ~/bentoml
    # Replaced by BentoML itself, so signals (Ctrl+C, a supervisor's SIGTERM) reach the server directly.
    os.chdir(ROOT)
    os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve", "service.service:Predictor",
                              "--host", host, "--port", str(port)])  # fmt: skip


@app.command("serve-demo")
def serve_demo(
    path: Annotated[Path, typer.Argument(help="Contact log; its last days are scored, the rest is history.")],
    held_out_days: Annotated[float, typer.Option(help="Score the contacts closed in the last N days.")] = 2.0,
    store: Annotated[
        Path | None,
        typer.Option(help="SQLite file for the demo's contact store, recreated (default HOME/data/demo/store.db)."),
    ] = None,
    show: Annotated[int, typer.Option(help="How many answers to print in full.")] = 3,
    model_name: ModelNameOption = None,
) -> None:
    """Start the real BentoML service, score the held-out contacts over HTTP, print answers, stop it.

    The store is first filled with the earlier contacts, so the service reads customer and agent history
    from it exactly as in production.
    """
    import json
    import secrets

    import httpx
    import pandas as pd

    from predictor.contacts.store import ContactStore
    from predictor.serving.api import contact_json
    from predictor.serving.devserver import running_service

    settings = _settings(model_name=model_name)
    store = store or settings.path("data/demo/store.db")
    _require_model(settings)  # no champion: say so now, not after the server's timeout
    contacts = _load(path, None, None).contacts.sort_values("closed_at")
    cutoff = contacts["closed_at"].max() - pd.Timedelta(days=held_out_days)
    history, held_out = contacts[contacts["closed_at"] <= cutoff], contacts[contacts["closed_at"] > cutoff]
    store.unlink(missing_ok=True)
    store_url = f"sqlite:///{store.resolve()}"
    ContactStore(store_url, _pseudonym_key(settings)).load_frame(history)
    console.print(f"store {store}: {len(history):,} earlier contacts loaded; scoring {len(held_out):,} held-out")
    token = secrets.token_urlsafe(16)
    env = {
        "PREDICTOR_REGISTRY__TRACKING_URI": _absolute_sqlite(settings.registry.tracking_uri),
        "PREDICTOR_REGISTRY__ARTIFACT_ROOT": str(Path(settings.registry.artifact_root).resolve()),
        "PREDICTOR_EMBEDDING__CACHE_DIR": str(Path(settings.embedding.cache_dir).resolve()),
        "PREDICTOR_SERVICE__STORE_URL": store_url,
        "PREDICTOR_API_TOKEN": token,
        "PREDICTOR_SERVICE__SCRIPTS_PATH": str(Path(settings.service.scripts_path).resolve()),
        "PREDICTOR_HOME": str(settings.home),
        "PREDICTOR_REGISTRY__MODEL_NAME": settings.registry.model_name,
    }
    started = time.perf_counter()
    with running_service(env, store.parent / "service.log") as service:
        console.print(f"service ready at {service.base_url} in {time.perf_counter() - started:.1f} s")
        client = httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=300)
        bodies = [contact_json(row) for row in held_out.to_dict("records")]
        results = []
        clock = time.perf_counter()
        with _progress() as progress:
            task = progress.add_task("scoring over HTTP", total=len(bodies))
            for start in range(0, len(bodies), 100):
                response = client.post("/score_batch", json={"contacts": bodies[start : start + 100]})
                response.raise_for_status()
                results.extend(item["result"] for item in response.json()["results"] if item["ok"])
                progress.advance(task, len(bodies[start : start + 100]))
        elapsed = time.perf_counter() - clock
    for answer in sorted(results, key=lambda r: -r["repeat_probability"])[:show]:
        console.print_json(json.dumps(answer))
    act = sum(r["follow_up"]["act"] for r in results)
    high = sum(r["risk_band"] == "high" for r in results)
    console.print(
        f"scored {len(results):,} contacts over HTTP in {elapsed:.1f} s ({len(results) / max(elapsed, 1e-9):.0f}/s); "
        f"{high} high risk; follow-up recommended for {act}"
    )


def _absolute_sqlite(uri: str) -> str:
    """The same database for a child process started elsewhere: a relative SQLite path made absolute."""
    from predictor.config import sqlite_file, with_sqlite_file

    database = sqlite_file(uri)
    return with_sqlite_file(uri, database.resolve()) if database is not None else uri


WEAKEST_SLICES = 6  # groups shown under the metrics table; all of them are in MLflow and --metrics-json


def _print_weakest_slices(by_slice, overall_auc: float) -> None:  # noqa: ANN001 - pandas.DataFrame
    """The groups of the test slice where the model ranks worst (the whole table is logged, not printed)."""
    scored = by_slice.dropna(subset=["roc_auc"]) if len(by_slice) else by_slice
    if not len(scored):
        return
    from predictor.output import count, fixed, percent, text

    rows = [
        [row.dimension, row.value, row.contacts, row.repeat_rate, row.predicted_rate, row.roc_auc, row.ece]
        for row in scored.sort_values("roc_auc").head(WEAKEST_SLICES).itertuples()
    ]
    _tables().table(
        f"Weakest groups of the test slice (overall AUC {overall_auc:.3f})",
        ["by", "group", "contacts", "repeats", "predicted", "AUC", "ECE"],
        rows, [text, text, count, percent, percent, fixed(3), fixed(3)],
    )  # fmt: skip


def print_training_result(result) -> None:  # noqa: ANN001 - TrainingResult, imported lazily
    split = result.split
    counts = split.counts
    if result.data_end is not None:
        console.print(result.data_end.describe())
    rates = split.repeat_rates
    console.print(
        f"split by close time: train {counts['train']:,} (repeat rate {rates.get('train', 0):.1%}), calibration "
        + (
            f"{counts['calibration']:,} ({rates.get('calibration', 0):.1%})"
            if split.calibration_mode == "slice"
            else "out-of-fold on the training slice"
        )
        + f", test {counts['test']:,} ({rates.get('test', 0):.1%}); window still open at data end (excluded) "
        f"{counts['window_open']:,}, of which censored {counts['censored']:,}; embargoed between slices "
        f"{counts['embargoed']:,}",
    )
    for message in [*split.notes, *result.warnings]:
        console.print(f"[yellow]{message}[/]")
    from predictor.output import fixed, text

    rows = [
        [str(name), row.roc_auc, row.pr_auc, row.brier, row.ece, row.recall_top10, row.recall_top20,
         row.get("roc_auc_long_transcripts", float("nan"))]
        for name, row in result.metrics.iterrows()
    ]  # fmt: skip
    _tables().table(
        "Repeat within the window: test slice",
        ["model", "AUC", "PR AUC", "Brier", "ECE", "rec@10", "rec@20", "AUC long"],
        rows, [text, fixed(3), fixed(3), fixed(3), fixed(3), fixed(3), fixed(3), fixed(3)],
    )  # fmt: skip
    _print_weakest_slices(result.by_slice, float(result.metrics.loc["model", "roc_auc"]))
    nxt = result.next_issue_metrics
    issues = [["model", nxt["top1_accuracy"], nxt["top3_accuracy"]]]
    issues += [
        [name, scores["top1_accuracy"], scores["top3_accuracy"]] for name, scores in result.next_issue_baselines.items()
    ]
    if "oracle_top3_accuracy" in nxt:
        issues.append(["oracle (simulator truth)", nxt["oracle_top1_accuracy"], nxt["oracle_top3_accuracy"]])
    _tables().table(
        "Next issue (repeats in the test slice)", ["model", "top-1", "top-3"], issues, [text, fixed(3), fixed(3)]
    )
    console.print(f"explicit share of repeats {nxt['explicit_share_actual']:.1%}")
    timing = result.timing_metrics
    console.print(
        f"hours to repeat: median absolute error {timing['median_abs_error_hours']:.1f} h; the 90% interval covers "
        f"{timing['p90_coverage']:.1%} of test repeats (nominal {timing.get('p90_nominal', 0.9):.0%}; "
        f"{timing.get('p90_coverage_uncalibrated', float('nan')):.1%} before its conformal correction)",
    )
    for item in result.skipped:
        console.print(f"[yellow]skipped {item.stage}:[/] {item.reason}")


def print_label_summary(summary, window_days: float) -> None:  # noqa: ANN001 - LabelSummary, imported lazily
    console.print(
        f"{summary.contacts:,} contacts; {summary.window_open:,} still inside their {window_days:g}-day window, "
        f"{summary.censored:,} of them with no repeat yet (censored: unknown, not 'no repeat'); rates below use "
        f"the {summary.labelled:,} whose window has closed."
    )
    console.print(
        f"repeat rate within {window_days:g} days: [bold]{summary.repeat_rate:.1%}[/] "
        f"(FCR {1 - summary.repeat_rate:.1%}); explicit (same issue) {summary.explicit_share:.1%}, "
        f"implicit {1 - summary.explicit_share:.1%} of repeats"
    )
    from predictor.output import count, percent, text

    for title, frame in (("By issue", summary.by_issue), ("By channel", summary.by_channel)):
        rows = [
            [str(key), int(row.contacts), int(row.censored), row.repeat_rate, row.explicit_share]
            for key, row in frame.iterrows()
        ]
        _tables().table(
            title, [frame.index.name, "contacts", "censored", "repeat rate", "explicit share"], rows,
            [text, count, count, percent, percent],
        )  # fmt: skip


def _load(  # noqa: ANN202 - ValidationResult, imported lazily
    path: Path, mapping: Path | None, assume_timezone: str | None, allow_empty: bool = False
):
    """A log: one file, a directory of exports or a glob (read as one log, rows numbered on across files).
    A log of which no row is valid stops the command, with the top reasons and what to check."""
    from predictor.contacts.schema import SchemaError, load_files

    if assume_timezone is not None:
        _check_zone(assume_timezone)
    try:
        result = load_files(path, mapping, assume_timezone)
    except SchemaError as exc:
        _fail(str(exc))
    if not allow_empty and not result.n_accepted:
        _fail(_all_rejected(path, result))
    share = result.n_rejected_rows / max(result.n_input, 1)
    if result.n_accepted and share > REJECTED_SHARE_WARNING:
        # The rest is not a random sample: a customer's missing contacts change the labels of the ones kept.
        err.print(
            f"[yellow]warning:[/] {share:.0%} of the rows were rejected ({_top_reasons(result)}); the labels of the "
            "rest may be skewed: fix the export or the mapping first (predictor validate)",
            soft_wrap=True,
        )
    return result


def _all_rejected(path: Path, result) -> str:  # noqa: ANN001 - ValidationResult
    if not result.n_input:
        return f"{path}: no rows"
    top = _top_reasons(result)
    hints = []
    reasons = " ".join(result.counts_by_reason()["reason"].head(3))
    if "time zone" in reasons:
        hints.append("--assume-timezone (or timezone: in the mapping)")
    if "not a valid timestamp" in reasons:
        hints.append("the timestamp format (timestamp_format: in the mapping)")
    if "missing value" in reasons or "unknown channel" in reasons:
        hints.append("the column mapping (predictor mapping draft FILE)")
    hint = f"; check {' and '.join(hints)}" if hints else ""
    return f"{path}: all {result.n_input:,} rows rejected: {top}{hint}"


def _bundle(  # noqa: ANN202 - (model, version[, plan])
    settings,  # noqa: ANN001 - Settings
    version: str | None,
    progress: Progress | None = None,
    with_plan: bool = False,
):
    """The registered model (the champion by default), or one line saying there is none and what to do."""
    from predictor.registry.tracking import RegistryError, load_version

    try:
        model, number, plan = load_version(settings, version)
        return (model, number, plan) if with_plan else (model, number)
    except RegistryError as exc:
        if progress is not None:
            progress.stop()
        _fail(str(exc))


def _require_model(settings) -> None:  # noqa: ANN001 - Settings
    """Stop here when the service would find no model (read from the registry file, without loading it)."""
    from predictor.registry.tracking import local_bundle

    if local_bundle(settings.registry, settings.service.model_version) is None:
        _bundle(settings, settings.service.model_version)  # says what is missing (or finds it another way)


def _top_reasons(result) -> str:  # noqa: ANN001 - ValidationResult
    return "; ".join(f"{r.field}: {r.reason} ({r.rows:,})" for r in result.counts_by_reason().head(3).itertuples())


def _check_zone(zone: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        _fail(f"--assume-timezone {zone!r} is not a time zone (e.g. UTC, Europe/Berlin, America/New_York)")


def _check_suffix(path: Path, allowed: tuple[str, ...]) -> None:
    if path.suffix.lower() not in allowed:
        _fail(f"{path}: unsupported file type {path.suffix or '(none)'!r}; use {', '.join(allowed)}")


def _unwrapped(doc: str | None) -> str | None:
    """A docstring's paragraphs as single lines: the help reflows them to the terminal's width (the line
    breaks of the source would otherwise show, mid-sentence, in a narrow terminal)."""
    if not doc:
        return doc
    import inspect

    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _unwrap_help(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.callback is not None:
            command.callback.__doc__ = _unwrapped(command.callback.__doc__)
    for group in typer_app.registered_groups:
        _unwrap_help(group.typer_instance)


_unwrap_help(app)

if __name__ == "__main__":  # pragma: no cover
    app()
