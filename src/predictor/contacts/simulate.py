"""A synthetic contact log with its ground truth kept beside it.

The mechanism follows ../shared/DOMAIN.md: every contact has latent outcomes (was the answer clear, was
the issue resolved, did the customer show confusion, did the agent mention the adjacent issue); they set
the probability of an *explicit* repeat (same issue) and of an *implicit* one (an adjacent issue, with an
issue-specific delay), and customers also come back for unrelated reasons (a background Poisson rate).
The transcript shows those latents in varied words, mostly at the close of the conversation, and is the
only place the pipeline can see them. Repeats are contacts too, and can repeat again.

The ground truth (the simulator's own probability of a repeat within the window and the distribution of
the next issue) goes to a separate file that only the oracle in evaluation may read.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from predictor.config import CHANNELS
from predictor.contacts import contract
from predictor.contacts.language import SERBIAN_LATIN, to_serbian_latin

# issue -> (complexity 0..1, explicit-repeat delay median hours, adjacency strength, share of new contacts)
ISSUES: dict[str, tuple[float, float, float, float]] = {
    "billing_question": (0.45, 48, 0.20, 0.14),
    "plan_change": (0.40, 30, 0.45, 0.09),
    "payment_failed": (0.50, 24, 0.35, 0.08),
    "new_device_setup": (0.60, 6, 0.40, 0.08),
    "network_outage": (0.55, 8, 0.30, 0.07),
    "roaming": (0.45, 20, 0.40, 0.05),
    "password_reset": (0.20, 3, 0.20, 0.08),
    "cancellation": (0.55, 72, 0.40, 0.05),
    "number_porting": (0.70, 24, 0.45, 0.04),
    "sim_delivery": (0.35, 48, 0.40, 0.06),
    "refund": (0.50, 96, 0.25, 0.06),
    "data_usage": (0.40, 36, 0.35, 0.07),
    "contract_renewal": (0.45, 60, 0.40, 0.05),
    "address_change": (0.25, 48, 0.30, 0.04),
    "voicemail_setup": (0.30, 4, 0.20, 0.04),
}
ISSUE_CODES: tuple[str, ...] = tuple(ISSUES)

# primary -> [(secondary, weight, delay median hours)]; delays from hours to beyond the 7-day window.
ADJACENT: dict[str, list[tuple[str, float, float]]] = {
    "billing_question": [("payment_failed", 0.6, 60), ("refund", 0.4, 110)],
    "plan_change": [("billing_question", 0.65, 150), ("data_usage", 0.35, 40)],
    "payment_failed": [("billing_question", 0.55, 40), ("refund", 0.45, 100)],
    "new_device_setup": [("voicemail_setup", 0.5, 5), ("password_reset", 0.5, 14)],
    "network_outage": [("refund", 0.6, 70), ("billing_question", 0.4, 210)],
    "roaming": [("data_usage", 0.6, 22), ("billing_question", 0.4, 170)],
    "password_reset": [("voicemail_setup", 1.0, 6)],
    "cancellation": [("refund", 0.6, 120), ("number_porting", 0.4, 20)],
    "number_porting": [("sim_delivery", 0.5, 45), ("network_outage", 0.5, 5)],
    "sim_delivery": [("new_device_setup", 0.7, 30), ("number_porting", 0.3, 12)],
    "refund": [("billing_question", 1.0, 140)],
    "data_usage": [("plan_change", 0.6, 36), ("billing_question", 0.4, 160)],
    "contract_renewal": [("new_device_setup", 0.55, 72), ("billing_question", 0.45, 190)],
    "address_change": [("sim_delivery", 0.5, 70), ("billing_question", 0.5, 200)],
    "voicemail_setup": [("password_reset", 1.0, 8)],
}
DELAY_SIGMA = 0.7  # log-normal spread of every delay
HANDLE_MEDIAN_SECONDS = {"phone": 420.0, "chat": 720.0, "email": 300.0, "social": 360.0}
CHANNEL_CLARITY = {"phone": 0.3, "chat": 0.0, "email": -0.2, "social": -0.4}
SEGMENTS = ("consumer", "business")


@dataclass(frozen=True)
class SimulatorConfig:
    n_contacts: int = 20_000
    seed: int = 7
    start: str = "2026-01-05"
    days: int = 180
    window_days: float = 7.0
    repeat_rate: float = 1 / 3  # target share of contacts repeated within the window (approximate)
    n_agents: int = 80
    contacts_per_customer: float = 1.6  # new-issue contacts per customer over the period
    phone_without_transcript: float = 0.3
    pii_share: float = 0.25
    transfer_continuation: float = 0.5  # share of transferred contacts continued by a second contact
    base_explicit: float = 0.015
    # Real exports, unlike a simulation of everything: an export taken at the end of the period holds only
    # the tickets closed by then ("closed-only"); e-mail handled as tickets stays open for days
    # (``ticket_days``: median days open, 0 = closed when handled); the repeat rate drifts over the period
    # (``drift``: relative change of the repeat intensity from start to end, -0.7 = falls by 70%).
    export: Literal["all", "closed-only"] = "all"
    ticket_days: float = 0.0
    drift: float = 0.0
    # The language the transcripts are written in: one of LANGUAGES, or "mixed" (a centre serving several;
    # each contact's language drawn by MIXED_LANGUAGES). Serbian contacts are in Cyrillic or Latin script.
    language: str = "en"
    issue_mix: dict[str, float] = field(default_factory=lambda: {k: v[3] for k, v in ISSUES.items()})


@dataclass
class SimulatedLog:
    contacts: pd.DataFrame
    truth: pd.DataFrame


def simulate(config: SimulatorConfig | None = None, progress: Callable[[int], None] | None = None) -> SimulatedLog:
    """Simulate about ``config.n_contacts`` contacts (exactly that many, oldest first) and their truth."""
    config = config or SimulatorConfig()
    rng = np.random.default_rng(config.seed)
    start = pd.Timestamp(config.start, tz="UTC")
    period_hours = config.days * 24.0
    issue_p = np.array([config.issue_mix[i] for i in ISSUE_CODES])
    issue_p = issue_p / issue_p.sum()
    # Scale intensities so the default lands near the target repeat rate (calibrated at 1/3).
    intensity = config.repeat_rate / (1 / 3)

    # Repeats add roughly half again to the new contacts; aim a little over and cut to n_contacts.
    n_new = int(config.n_contacts * 0.72) + 50
    n_customers = max(1, int(n_new / config.contacts_per_customer))
    customers = _customers(rng, n_customers)
    agents = _agents(rng, config.n_agents)
    # New-issue contacts form a Poisson process per customer; its rate is also the chance that a
    # customer comes back for something unrelated (a repeat by coincidence, part of every real log).
    share = customers["weight"].to_numpy() / customers["weight"].sum()
    customers["background_per_hour"] = n_new * share / period_hours

    cust = rng.choice(n_customers, n_new, p=share)
    opened = _business_hours(rng, rng.uniform(0, period_hours, n_new))
    wave = pd.DataFrame(
        {
            "customer": cust,
            "opened_h": opened,
            "issue": rng.choice(len(ISSUE_CODES), n_new, p=issue_p),
            "channel": _pick_channel(rng, customers["preferred_channel"].to_numpy()[cust]),
            "origin": "new",
        }
    )
    # Every contact's id in the simulation and the contact that caused it (-1: a new issue): a simulated
    # deployment acts on these links (a follow-up that prevents a repeat removes the repeat and what it caused).
    wave["uid"] = np.arange(len(wave))
    wave["parent"] = -1
    issued = len(wave)
    waves = []
    while len(wave):
        wave = wave[wave["opened_h"] < period_hours].reset_index(drop=True)
        if not len(wave):
            break
        handled = _handle(rng, wave, customers, agents, config, intensity)
        waves.append(handled)
        if progress:
            progress(len(handled))
        wave = _next_wave(rng, handled, customers, config.transfer_continuation)
        wave["uid"] = np.arange(issued, issued + len(wave))
        issued += len(wave)
    log = pd.concat(waves, ignore_index=True).sort_values(["opened_h", "customer"], kind="stable")
    log = log.head(config.n_contacts).reset_index(drop=True)
    log["contact_id"] = [f"C{i:07d}" for i in range(1, len(log) + 1)]

    text_rng = random.Random(config.seed)
    languages = _languages(config, len(log))
    # Script, typos and code-switching in other languages come from a stream of their own, so the main
    # text stream draws the same sentences in every language (a seed tells one story, in any language).
    side_rng = random.Random(config.seed + 1)
    transcripts = [
        _transcript(text_rng, row, config, language, side_rng)
        for row, language in zip(log.itertuples(index=False), languages, strict=True)
    ]
    hours = pd.to_timedelta(log["opened_h"], unit="h")
    opened_at = (start + hours).dt.floor("s")
    duration = pd.to_timedelta(log["open_seconds"], unit="s")
    contacts = pd.DataFrame(
        {
            "contact_id": log["contact_id"],
            "customer_id": [f"U{c:06d}" for c in log["customer"]],
            "opened_at": opened_at,
            "closed_at": (opened_at + duration).dt.floor("s"),
            "channel": log["channel"],
            "issue": [ISSUE_CODES[i] for i in log["issue"]],
            "transcript": transcripts,
            "agent_id": [f"A{a:03d}" for a in log["agent"]],
            "handle_seconds": log["handle_seconds"].round(0),
            "hold_seconds": log["hold_seconds"].round(0),
            "transfers": log["transfers"].astype(int),
            "queue": log["queue"],
            "csat": log["csat"],
            "language": [code.split("-")[0] for code in languages],  # "sr-Latn" is Serbian too
        }
    )[list(contract.names())]  # the contract's columns, in its order: a new field must be simulated too
    truth = _truth(log, config, issue_p)
    # The contact that caused each one (a repeat's first contact, a continuation's transferred one), if in the log.
    contact_of_uid = dict(zip(log["uid"], log["contact_id"], strict=True))
    truth["parent_contact_id"] = [contact_of_uid.get(int(u)) for u in log["parent"]]
    if config.export == "closed-only":
        # Extracted right after the last opening: a ticket still open then is not in the export.
        closed_by_end = (log["closed_h"] <= log["opened_h"].max()).to_numpy()
        contacts = contacts[closed_by_end].reset_index(drop=True)
        truth = truth[closed_by_end].reset_index(drop=True)
    return SimulatedLog(contacts=contacts, truth=truth)


def _customers(rng: np.random.Generator, n: int) -> pd.DataFrame:
    segment = rng.choice(len(SEGMENTS), n, p=[0.8, 0.2])
    return pd.DataFrame(
        {
            "segment": segment,
            "tenure_months": rng.gamma(2.0, 18.0, n),
            "preferred_channel": rng.choice(len(CHANNELS), n, p=[0.45, 0.3, 0.15, 0.1]),
            "weight": np.where(segment == 1, 2.0, 1.0) * rng.gamma(16.0, 1 / 16, n),
            "persistence": rng.normal(0.0, 0.05, n),
        }
    )


def _agents(rng: np.random.Generator, n: int) -> pd.DataFrame:
    weight = rng.pareto(2.0, n) + 0.3  # a few agents take few contacts: their rates are noisy
    return pd.DataFrame({"skill": rng.beta(4.0, 3.0, n), "weight": weight / weight.sum()})


def _business_hours(rng: np.random.Generator, hours: np.ndarray) -> np.ndarray:
    day = np.floor(hours / 24.0)
    within = np.clip(rng.normal(13.0, 3.0, len(hours)), 7.0, 21.5)
    return day * 24.0 + within


def _pick_channel(rng: np.random.Generator, preferred: np.ndarray) -> np.ndarray:
    other = rng.integers(0, len(CHANNELS), len(preferred))
    chosen = np.where(rng.random(len(preferred)) < 0.7, preferred, other)
    return np.array(CHANNELS)[chosen]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _handle(
    rng: np.random.Generator,
    wave: pd.DataFrame,
    customers: pd.DataFrame,
    agents: pd.DataFrame,
    config: SimulatorConfig,
    intensity: float,
) -> pd.DataFrame:
    """Draw who handled each contact, how it went, and what it caused."""
    n = len(wave)
    out = wave.copy()
    complexity = np.array([ISSUES[ISSUE_CODES[i]][0] for i in out["issue"]])
    cust = customers.iloc[out["customer"].to_numpy()]
    segment = cust["segment"].to_numpy()
    channel = out["channel"].to_numpy()
    agent = rng.choice(len(agents), n, p=agents["weight"].to_numpy())
    skill = agents["skill"].to_numpy()[agent]
    channel_clarity = np.array([CHANNEL_CLARITY[c] for c in channel])
    new_customer = cust["tenure_months"].to_numpy() < 3

    transfers = rng.poisson(0.05 + 0.5 * complexity * (1 - skill), n)
    clear = rng.random(n) < _sigmoid(0.4 + 3.0 * (skill - 0.55) - 2.0 * (complexity - 0.45) + channel_clarity)
    resolved = rng.random(n) < _sigmoid(1.3 + 2.5 * (skill - 0.55) - 2.5 * (complexity - 0.45) - 0.5 * transfers)
    confused = rng.random(n) < np.where(clear, 0.08, 0.65) + np.where(new_customer, 0.1, 0.0)
    mentioned = rng.random(n) < 0.1 + 0.7 * skill

    # Drift: the repeat intensity moves linearly over the period (a product fix, a new process).
    intensity = intensity * np.clip(1.0 + config.drift * out["opened_h"].to_numpy() / (config.days * 24.0), 0.05, None)
    persistence = cust["persistence"].to_numpy() + np.where(segment == 1, 0.2, 0.0)
    p_explicit = (
        (config.base_explicit + 0.34 * ~resolved + 0.12 * ~clear + 0.12 * confused) * np.exp(persistence) * intensity
    )
    p_explicit = np.clip(p_explicit, 0.0, 0.9)
    adjacency = np.array([ISSUES[ISSUE_CODES[i]][2] for i in out["issue"]])
    p_implicit = np.clip(adjacency * np.where(mentioned, 0.08, 1.0) * 0.72 * intensity, 0.0, 0.9)

    handle = HANDLE_MEDIAN_SECONDS_ARRAY(channel) * np.exp(
        rng.normal(0, 0.45, n) + 0.9 * (complexity - 0.45) - 0.4 * (skill - 0.55) + 0.25 * transfers
    )
    hold = np.where(
        np.isin(channel, ["phone", "chat"]),
        rng.exponential(30.0 + 120.0 * (1 - skill) * complexity, n) * (rng.random(n) < 0.5),
        0.0,
    )
    csat_known = rng.random(n) < 0.35
    csat_raw = np.clip(np.round(2.5 + 1.2 * resolved + 0.8 * clear - 0.6 * confused + rng.normal(0, 0.8, n)), 1, 5)

    u = rng.random(n)
    outcome = np.where(u < p_explicit, 1, np.where(u < p_explicit + p_implicit * (1 - p_explicit), 2, 0))
    secondary = np.array([_draw_secondary(rng, ISSUE_CODES[i]) for i in out["issue"]])
    explicit_delay = np.array([ISSUES[ISSUE_CODES[i]][1] for i in out["issue"]])
    delay_of = {(p, s): d for p, options in ADJACENT.items() for s, _, d in options}
    secondary_delay = np.array(
        [delay_of[ISSUE_CODES[i], ISSUE_CODES[j]] for i, j in zip(out["issue"], secondary, strict=True)]
    )
    delay = np.where(outcome == 1, explicit_delay, secondary_delay) * np.exp(rng.normal(0, DELAY_SIGMA, n))

    out["agent"] = agent
    out["skill"] = skill
    continued = (out["origin"] == "continuation").to_numpy()
    out["transfers"] = np.where(continued, 0, transfers)
    drawn = {
        "clear": clear,
        "resolved": resolved,
        "confused": confused,
        "mentioned": mentioned,
        "p_explicit": p_explicit,
        "p_implicit": p_implicit * (1 - p_explicit),
        "outcome": outcome,
        "secondary": secondary,
        "delay_h": delay,
    }
    for column, values in drawn.items():
        inherited = np.where(continued, out[column], values) if column in out.columns else values
        out[column] = np.asarray(inherited).astype(values.dtype)
    out["new_customer"] = new_customer
    out["background_per_hour"] = cust["background_per_hour"].to_numpy()
    out["handle_seconds"] = handle
    out["hold_seconds"] = hold
    out["queue"] = np.where(
        np.array([ISSUE_CODES[i] for i in out["issue"]]) == "cancellation",
        "retention",
        np.where(segment == 1, "business", "consumer"),
    )
    out["csat"] = np.where(csat_known, csat_raw, np.nan)
    open_seconds = handle + hold
    if config.ticket_days > 0:
        # E-mail as tickets: resolved after days in a queue, not when first handled.
        days_open = np.minimum(config.ticket_days * np.exp(rng.normal(0.0, 0.6, n)), 4 * config.ticket_days)
        open_seconds = np.where(channel == "email", days_open * 86400.0, open_seconds)
    out["open_seconds"] = open_seconds
    out["closed_h"] = out["opened_h"] + open_seconds / 3600.0
    out["segment"] = segment
    return out


def HANDLE_MEDIAN_SECONDS_ARRAY(channel: np.ndarray) -> np.ndarray:
    return np.array([HANDLE_MEDIAN_SECONDS[c] for c in channel])


def _draw_secondary(rng: np.random.Generator, issue: str) -> int:
    options = ADJACENT[issue]
    weights = np.array([w for _, w, _ in options])
    pick = rng.choice(len(options), p=weights / weights.sum())
    return ISSUE_CODES.index(options[pick][0])


INHERITED: tuple[str, ...] = (
    "clear",
    "resolved",
    "confused",
    "mentioned",
    "p_explicit",
    "p_implicit",
    "outcome",
    "secondary",
    "delay_h",
)


def _next_wave(
    rng: np.random.Generator, handled: pd.DataFrame, customers: pd.DataFrame, transfer_continuation: float
) -> pd.DataFrame:
    """Contacts caused by this wave: transfer continuations, repeats, and unrelated returns."""
    parts = []
    # A transferred contact is often continued minutes later: the same contact, not a repeat.
    # The episode's outcome was settled in the first contact: the continuation inherits it.
    cont = handled[(handled["transfers"] > 0) & (rng.random(len(handled)) < transfer_continuation)]
    cont = cont.assign(
        opened_h=cont["closed_h"] + rng.uniform(1, 10, len(cont)) / 60.0, origin="continuation", parent=cont["uid"]
    )
    parts.append(cont[["customer", "opened_h", "issue", "channel", "origin", "parent", *INHERITED]])
    # Repeats come only from contacts not continued (the continuation carries the episode's outcome).
    caused = handled[(handled["outcome"] > 0) & ~handled.index.isin(cont.index)]
    issue = np.where(caused["outcome"] == 1, caused["issue"], caused["secondary"])
    same_channel = rng.random(len(caused)) < 0.6
    preferred = customers["preferred_channel"].to_numpy()[caused["customer"].to_numpy()]
    channel = np.where(same_channel, caused["channel"], np.array(CHANNELS)[preferred])
    parts.append(
        pd.DataFrame(
            {
                "customer": caused["customer"].to_numpy(),
                "opened_h": caused["closed_h"].to_numpy() + caused["delay_h"].to_numpy(),
                "issue": issue,
                "channel": channel,
                "origin": np.where(caused["outcome"] == 1, "explicit", "implicit"),
                "parent": caused["uid"].to_numpy(),
            }
        )
    )
    return pd.concat(parts, ignore_index=True)


def _truth(log: pd.DataFrame, config: SimulatorConfig, issue_p: np.ndarray) -> pd.DataFrame:
    """The probability of a repeat within the window, and of each next issue, from the mechanism."""
    window = config.window_days * 24.0
    grid = np.linspace(0.0, window, 337)[None, :]  # half-hour steps
    lam = log["background_per_hour"].to_numpy()[:, None]
    survival_bg = np.exp(-lam * grid)

    def lognormal_cdf(median: np.ndarray) -> np.ndarray:
        from scipy.special import ndtr

        with np.errstate(divide="ignore"):
            return ndtr((np.log(np.maximum(grid, 1e-9)) - np.log(median[:, None])) / DELAY_SIGMA)

    issues = log["issue"].to_numpy()
    n = len(log)
    p_first = np.zeros((n, len(ISSUE_CODES)))
    caused_cdf_total = np.zeros_like(grid * np.ones((n, 1)))
    components: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    explicit_median = np.array([ISSUES[ISSUE_CODES[i]][1] for i in issues])
    components.append((log["p_explicit"].to_numpy(), explicit_median, issues))
    for slot in range(2):
        prob = np.zeros(n)
        median = np.ones(n)
        target = np.zeros(n, dtype=int)
        for row, i in enumerate(issues):
            options = ADJACENT[ISSUE_CODES[i]]
            if slot < len(options):
                secondary, weight, delay = options[slot]
                total = sum(w for _, w, _ in options)
                prob[row] = log["p_implicit"].iat[row] * weight / total
                median[row] = delay
                target[row] = ISSUE_CODES.index(secondary)
        components.append((prob, median, target))

    for prob, median, target in components:
        cdf = lognormal_cdf(median) * prob[:, None]
        caused_cdf_total += cdf
        density = np.diff(cdf, axis=1)
        mass = (density * survival_bg[:, 1:]).sum(axis=1)
        np.add.at(p_first, (np.arange(n), target), mass)
    # The background return wins when it comes before any caused repeat.
    bg_density = -np.diff(survival_bg, axis=1)
    bg_mass = (bg_density * (1 - caused_cdf_total[:, 1:])).sum(axis=1)
    p_first += bg_mass[:, None] * issue_p[None, :]
    # Continued contacts repeat through their continuation, which is a few minutes later.
    p_repeat = p_first.sum(axis=1)
    next_dist = p_first / np.maximum(p_repeat[:, None], 1e-12)

    truth = pd.DataFrame(
        {
            "contact_id": log["contact_id"].to_numpy(),
            "true_repeat_probability": p_repeat,
            "caused_outcome": np.array(["none", "explicit", "implicit"])[log["outcome"].to_numpy()],
            "caused_issue": np.where(
                log["outcome"] == 1,
                [ISSUE_CODES[i] for i in issues],
                np.where(log["outcome"] == 2, [ISSUE_CODES[i] for i in log["secondary"]], None),
            ),
            "caused_delay_hours": np.where(log["outcome"] > 0, log["delay_h"], np.nan),
            "clear": log["clear"].to_numpy(),
            "resolved": log["resolved"].to_numpy(),
            "confused": log["confused"].to_numpy(),
            "mentioned_adjacent": log["mentioned"].to_numpy(),
            "origin": log["origin"].to_numpy(),
        }
    )
    for k, code in enumerate(ISSUE_CODES):
        truth[f"p_next__{code}"] = next_dist[:, k]
    return _carry_continuations(truth, log)


def _carry_continuations(truth: pd.DataFrame, log: pd.DataFrame) -> pd.DataFrame:
    """A transferred contact that was continued repeats exactly when its continuation does."""
    cont = log.index[log["origin"] == "continuation"]
    if not len(cont):
        return truth
    prob_cols = ["true_repeat_probability", *[c for c in truth.columns if c.startswith("p_next__")]]
    by_customer = log.reset_index().sort_values(["customer", "opened_h"])
    prev = by_customer.groupby("customer")["index"].shift(1)
    parent_of = dict(zip(by_customer["index"], prev, strict=True))
    for child in cont:
        parent = parent_of.get(child)
        if parent is not None and not np.isnan(parent):
            truth.loc[int(parent), prob_cols] = truth.loc[child, prob_cols].to_numpy()
    return truth


# --- transcripts -----------------------------------------------------------------------------------------


LANGUAGES: tuple[str, ...] = ("en", "ru", "be", "sr")
# A multilingual centre's mix ("mixed"): the share of contacts in each language.
MIXED_LANGUAGES: dict[str, float] = {"en": 0.25, "ru": 0.35, "be": 0.15, "sr": 0.25}
SERBIAN_LATIN_SHARE = 0.5  # Serbian is written in both scripts; chats lean Latin, letters Cyrillic


@functools.cache
def phrases(language: str = "en") -> dict[str, Any]:
    """The transcript phrasing of one language (``en``, ``ru``, ``be``, ``sr``, ``sr-Latn``), from the
    package's data files; YAML lists become tuples, as the draws expect."""
    from importlib import resources

    import yaml

    def frozen(value: object) -> object:
        if isinstance(value, dict):
            return {key: frozen(item) for key, item in value.items()}
        if isinstance(value, list):
            return tuple(frozen(item) for item in value)
        return value

    if language == SERBIAN_LATIN:
        return _transliterated(phrases("sr"))
    if language not in LANGUAGES:
        raise ValueError(f"no phrasing for language {language!r}; one of {', '.join(LANGUAGES)}")
    name = "simulator_phrases.yaml" if language == "en" else f"simulator_phrases.{language}.yaml"
    text = resources.files("predictor").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return {key.upper(): frozen(value) for key, value in yaml.safe_load(text).items()}


_PHRASES = phrases("en")
AGENT_NAMES: tuple[str, ...] = _PHRASES["AGENT_NAMES"]
ISSUE_PHRASES: dict[str, tuple[str, ...]] = _PHRASES["ISSUE_PHRASES"]  # how a customer opens, per issue
PROACTIVE: dict[str, tuple[str, ...]] = _PHRASES["PROACTIVE"]  # an agent heading off the adjacent issue
# How Serbian Latin is typed on a phone without the diacritics ("racun", "sta", "djordje").
_NO_DIACRITICS = str.maketrans({"č": "c", "ć": "c", "š": "s", "ž": "z", "đ": "dj", "Č": "C", "Ć": "C",
                                "Š": "S", "Ž": "Z", "Đ": "Dj"})  # fmt: skip


def _transliterated(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _transliterated(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_transliterated(item) for item in value)
    return to_serbian_latin(value) if isinstance(value, str) else value


# Words customers mix in from another language in chats (code-switching), per language of the chat.
_CODE_SWITCH: dict[str, tuple[tuple[str, str], ...]] = {
    "ru": (("спасибо", "спс"), ("Спасибо", "Thanks"), ("хорошо", "ок"), ("Хорошо", "Ok"), ("приложени", "апп"),
           ("Извините", "Сорри"), ("пожалуйста", "плиз")),
    # Belarusian chats drift into Russian (trasianka): a Russian word where the Belarusian one stands.
    "be": (("дзякуй", "спасибо"), ("Дзякуй", "Спасибо"), ("Добра", "Хорошо"), ("калі ласка", "пожалуйста"),
           ("Прабачце", "Извините"), ("праграм", "приложени"), ("зараз", "сейчас")),
    "sr": (("хвала", "thanks"), ("Хвала", "Thanks"), ("У реду", "Ok"), ("Добро", "Okej"), ("Извините", "Sorry"),
           ("апликациј", "app"), ("мејл", "email")),
}  # fmt: skip
_CODE_SWITCH[SERBIAN_LATIN] = tuple((to_serbian_latin(a), b) for a, b in _CODE_SWITCH["sr"])
CODE_SWITCH_SHARE = 0.3  # of a chat's customer lines


def _languages(config: SimulatorConfig, n: int) -> list[str]:
    """Each contact's language (``sr-Latn`` for Serbian in Latin script), from a stream of its own."""
    if config.language not in (*LANGUAGES, "mixed"):
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)} or mixed, not {config.language!r}")
    rng = np.random.default_rng([config.seed, 19])
    if config.language == "mixed":
        codes = np.array(list(MIXED_LANGUAGES))
        shares = np.array(list(MIXED_LANGUAGES.values()))
        drawn = codes[rng.choice(len(codes), n, p=shares / shares.sum())]
    else:
        drawn = np.full(n, config.language, dtype=object)
    latin = rng.random(n) < SERBIAN_LATIN_SHARE
    return [
        SERBIAN_LATIN if code == "sr" and is_latin else str(code) for code, is_latin in zip(drawn, latin, strict=True)
    ]


# The outcome sentences are composed from parts (CLEAR_PARTS, CONFUSING_PARTS, ...), so the same meaning comes
# in hundreds of wordings (as in real conversations) and a model must read meaning, not memorise a handful of
# phrases.
def _compose(rng: random.Random, parts: tuple[tuple[str, ...], ...], **values: object) -> str:
    text = " ".join(p for p in (rng.choice(options) for options in parts) if p).format(**values)
    return text.replace(" ,", ",").replace(" .", ".")


def _typos(rng: random.Random, text: str, rate: float = 0.03) -> str:
    """Customers type fast: swap a few neighbouring letters (chat, e-mail and social only)."""
    chars = list(text)
    for k in range(len(chars) - 1):
        if chars[k].isalpha() and chars[k + 1].isalpha() and rng.random() < rate:
            chars[k], chars[k + 1] = chars[k + 1], chars[k]
    return "".join(chars)


def _typed(side: random.Random, text: str, language: str) -> str:
    """A customer's chat line as typed in a language other than English: code-switching, Serbian Latin
    often without its diacritics."""
    for native, foreign in _CODE_SWITCH.get(language, ()):
        if native in text and side.random() < CODE_SWITCH_SHARE:
            text = text.replace(native, foreign, 1)
    if language == SERBIAN_LATIN and side.random() < 0.5:
        text = text.translate(_NO_DIACRITICS)
    return text


# Local shapes of personal data: (phone formats, card prefixes, account formats) per language.
_LOCAL_PII: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "ru": (("+7 9{a} {b}-{c}-{d}", "8 (9{a}) {b}-{c}-{d}"), ("2202", "4276"), ("40817810{acct12}", "{pass}")),
    "be": (("+375 29 {b}-{c}-{d}", "8 (029) {b}-{c}-{d}", "+375 (33) {b} {c} {d}"), ("9112", "4255"),
           ("BY13 NBRB 3600 9000 0000 2Z00 {acct4}", "{pnum}")),
    "sr": (("+381 6{e} {b} {f}", "06{e}/{b}-{f}", "06{e} {b} {c} {d}"), ("9891", "4058"),
           ("RS35 2600 0560 1001 6113 {two}", "160-{acct13}-{two}", "{jmbg}")),
}  # fmt: skip
_LOCAL_PII[SERBIAN_LATIN] = _LOCAL_PII["sr"]


def _pii(rng: random.Random, lines: dict[str, Any], language: str, side: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return lines["PII"]["email"].format(user=rng.choice(lines["EMAIL_USERS"]), n=rng.randrange(10, 99))
    if language == "en":
        if kind == 1:
            return lines["PII"]["phone"].format(phone=f"+44 7{rng.randrange(100, 999)} {rng.randrange(100000, 999999)}")
        groups = " ".join(f"{rng.randrange(1000, 9999)}" for _ in range(4))
        return lines["PII"]["card"].format(card=groups)
    phones, cards, accounts = _LOCAL_PII[language]

    def digits(k: int) -> str:
        return "".join(str(side.randrange(10)) for _ in range(k))

    values = {"a": digits(2), "b": digits(3), "c": digits(2), "d": digits(2), "e": str(side.randrange(10)),
              "f": digits(4), "two": digits(2), "acct4": digits(4), "acct12": digits(12), "acct13": digits(13),
              "jmbg": digits(13), "pass": f"{digits(2)} {digits(2)} {digits(6)}",
              "pnum": f"{digits(7)}A{digits(3)}PB{digits(1)}"}  # fmt: skip
    if kind == 1:
        return lines["PII"]["phone"].format(phone=side.choice(phones).format(**values))
    if side.random() < 0.5:
        sep = side.choice((" ", "-", ""))
        card = sep.join([side.choice(cards), digits(4), digits(4), digits(4)])
        return lines["PII"]["card"].format(card=card)
    return lines["PII"]["account"].format(account=side.choice(accounts).format(**values))


def _transcript(
    rng: random.Random, row: object, config: SimulatorConfig, language: str = "en", side: random.Random | None = None
) -> str:
    lines_of = phrases(language)
    side = side or random.Random(0)
    agent, customer = lines_of["SPEAKERS"]["agent"], lines_of["SPEAKERS"]["customer"]
    speaker_name = {"Agent": agent, "Customer": customer}
    channel = row.channel
    if channel == "phone" and rng.random() < config.phone_without_transcript:
        return ""
    issue = ISSUE_CODES[row.issue]
    typed = channel != "phone" and language != "en"

    def says(text: str) -> str:  # a customer's line, as typed in chats in languages other than English
        return f"{customer}: {_typed(side, text, language) if typed else text}"

    # Social and many chat/e-mail threads are terse: no greeting, no small talk, no sign-off.
    brief = channel == "social" or (channel in ("chat", "email") and rng.random() < 0.25)
    names = lines_of["AGENT_NAMES"]
    lines = [] if brief else [f"{agent}: {rng.choice(lines_of['GREETINGS']).format(name=rng.choice(names))}"]
    opening = rng.choice(lines_of["ISSUE_PHRASES"][issue])
    lines.append(says(lines_of["HELLO"].format(opening=opening)))
    if row.origin == "explicit":
        lines.append(says(rng.choice(lines_of["ALREADY_CALLED"])))
    if row.new_customer and rng.random() < 0.85:
        lines.append(says(lines_of["NEW_CUSTOMER"]))
    if rng.random() < config.pii_share:
        lines.append(f"{customer}: {_pii(rng, lines_of, language, side)}")
    # Middle turns vary the length from a few lines to several hundred words; the outcome is said at the end.
    n_filler = min(int(rng.expovariate(1 / (2.0 + 6.0 * ISSUES[issue][0]))), 40)
    if channel == "email":
        n_filler = n_filler // 2
    if brief:
        n_filler = 0
    for _ in range(n_filler):
        speaker, text = rng.choice(lines_of["FILLER"])
        lines.append(says(text) if speaker == "Customer" else f"{speaker_name[speaker]}: {text}")
    if row.transfers:
        lines.append(f"{agent}: {lines_of['TRANSFER']}")
    if row.clear:
        action = rng.choice(lines_of["ACTIONS"])
        lines.append(f"{agent}: " + _compose(rng, lines_of["CLEAR_PARTS"], action=action, n=rng.choice((2, 4, 24, 48))))
    else:
        lines.append(f"{agent}: " + _compose(rng, lines_of["CONFUSING_PARTS"]))
    lines.append(f"{agent}: " + _compose(rng, lines_of["RESOLVED_PARTS" if row.resolved else "UNRESOLVED_PARTS"]))
    reaction = rng.choice(lines_of["CONFUSED" if row.confused else "SATISFIED"])
    if channel != "phone":
        # English keeps its typos in the main stream (the English log predates the other languages).
        reaction = _typos(rng if language == "en" else side, reaction)
    lines.append(says(reaction) if typed else f"{customer}: {reaction}")
    if row.mentioned:
        secondary = [s for s, _, _ in ADJACENT[issue]]
        proactive = lines_of["PROACTIVE"]
        mention = rng.choice(proactive.get(rng.choice(secondary), proactive["billing_question"]))
        lines.append(f"{agent}: {mention[0].upper()}{mention[1:]}.")
    if not brief:
        lines.append(f"{agent}: " + rng.choice(lines_of["CLOSINGS"]))
    return "\n".join(lines)


def truth_path(contacts_path: str | Path) -> Path:
    """Where the ground truth of a simulated log lives: beside it, never inside it."""
    contacts_path = Path(contacts_path)
    return contacts_path.with_name(contacts_path.name.split(".")[0] + ".truth.parquet")


def write(result: SimulatedLog, contacts_path: str | Path) -> tuple[Path, Path]:
    """Write the log and, beside it, its ground truth."""
    from predictor.contacts.schema import write_table

    return write_table(result.contacts, contacts_path), write_table(result.truth, truth_path(contacts_path))
