"""A simulated deployment that checks the prevention estimate against a known effect.

The simulator is the world: it knows which contact caused which (a repeat, a transfer's continuation). A
model is trained on the first weeks; the real service (BentoML over HTTP) then scores every later contact
as it closes, step by step. The ticketing system's part is played here: it sends most of the follow-ups the
service says to send (``/follow_ups``), and the world answers with the effect written into it: a follow-up
that lands before an implicit (explicit) repeat prevents it with probability ``prevent_implicit``
(``prevent_explicit``), with everything that repeat would have caused, and prompts a contact of its own with
probability ``prompt``. ``predictor outcomes`` then measures the store, knowing nothing of this.

The true effect is computed per contact from both of its worlds (with a follow-up and without), drawn with
the same random numbers: the mean over the contacts that counted in the experiment of (repeat without) -
(repeat with) is what the measured held-out minus treated difference estimates.
"""

from __future__ import annotations

import bisect
import logging
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictor.config import EmbeddingConfig, RegistryConfig, ServiceConfig, Settings
from predictor.contacts import contract
from predictor.contacts.labels import derive
from predictor.contacts.schema import validate
from predictor.contacts.simulate import SimulatorConfig, simulate
from predictor.contacts.store import ContactStore
from predictor.loop.assignment import HELD_OUT, TREATED
from predictor.loop.outcomes import Outcomes, outcomes

log = logging.getLogger(__name__)
PREVENTABLE = ("explicit", "implicit")


@dataclass(frozen=True)
class Effect:
    prevent_implicit: float = 0.5  # an addressed adjacent issue does not come back
    prevent_explicit: float = 0.3  # a clarified answer does not need a second call
    prompt: float = 0.05  # a follow-up makes the customer contact us (a reply, a question)
    compliance: float = 0.9  # share of due follow-ups the ticketing system actually sends


@dataclass(frozen=True)
class DeploymentConfig:
    n_contacts: int = 6000
    seed: int = 7
    days: int = 120
    train_days: int = 60  # the model is trained on the contacts closed in these first days
    step_hours: float = 6.0  # the service scores each step's closes in one batch
    send_delay_hours: float = 0.5  # a follow-up goes out this long after the close
    holdout_share: float = 0.5
    follow_up_threshold: float = 0.3
    experiment: str = "simulated-1"


@dataclass
class Prepared:
    """A trained, registered model and the world it will be deployed in (shared by several deployments)."""

    config: DeploymentConfig
    settings: Settings  # the registry the model is in
    world: pd.DataFrame  # every simulated contact (validated), with origin and parent
    history: pd.DataFrame  # the contacts closed before deployment (the store's history)
    live: pd.DataFrame  # the contacts to deploy on, oldest close first
    version: str


@dataclass
class Deployment:
    effect: Effect
    outcomes: Outcomes
    true_itt: float  # the mean over counted contacts (windows closed) of repeat without - repeat with
    counted: int
    scored: int
    sent: int
    prevented: int  # repeats the follow-ups removed from the world
    prompted: int  # contacts the follow-ups added
    told_to_act_while_held_out: int
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        itt = self.outcomes.itt
        estimate = None if itt is None else asdict(itt.difference)
        return {
            "effect": asdict(self.effect),
            "true_itt": self.true_itt,
            "estimated_itt": estimate,
            "covered": None if itt is None else bool(itt.difference.low <= self.true_itt <= itt.difference.high),
            "counted": self.counted,
            "scored": self.scored,
            "sent": self.sent,
            "prevented": self.prevented,
            "prompted": self.prompted,
            "held_out_share": self.outcomes.held_out_share,
            "told_to_act_while_held_out": self.told_to_act_while_held_out,
            "live_quality": self.outcomes.quality,
        }


def prepare(config: DeploymentConfig, workdir: Path, embedding: EmbeddingConfig | None = None) -> Prepared:
    """Simulate the world, train on its first ``train_days`` and register the model (in ``workdir``)."""
    from predictor.registry.tracking import log_and_register
    from predictor.training.train import fit

    workdir.mkdir(parents=True, exist_ok=True)
    simulated = simulate(SimulatorConfig(n_contacts=config.n_contacts, seed=config.seed, days=config.days))
    world = validate(simulated.contacts).contacts
    links = simulated.truth[["contact_id", "origin", "parent_contact_id"]]
    world = (
        world.merge(links, on="contact_id", how="left").sort_values(["closed_at", "contact_id"]).reset_index(drop=True)
    )
    start = world["opened_at"].min().floor("D")
    deployed_at = start + pd.Timedelta(days=config.train_days)
    history = world[world["closed_at"] < deployed_at]
    live = world[world["closed_at"] >= deployed_at]
    settings = Settings(
        embedding=embedding or EmbeddingConfig(cache_dir=workdir / "embedding-cache", backend="model2vec"),
        registry=RegistryConfig(
            tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
            artifact_root=workdir / "mlartifacts",
            model_name="simulated-deployment",
        ),
    )
    trained = history[list(contract.names())]
    result = fit(trained, settings, ablation=False)
    registration = log_and_register(result, settings, trained)
    log.info(
        "deployment model: version %s trained on %d contacts before %s", registration.version, len(trained), deployed_at
    )
    return Prepared(config, settings, world, history, live, registration.version)


def deploy(
    prepared: Prepared,
    effect: Effect,
    workdir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Deployment:
    """Replay the live contacts through the real service over HTTP with ``effect`` in the world."""
    import httpx

    from predictor.serving.api import contact_json
    from predictor.serving.devserver import running_service

    config = prepared.config
    workdir.mkdir(parents=True, exist_ok=True)
    store_path = workdir / "store.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store_path}{suffix}").unlink(missing_ok=True)
    store_url = f"sqlite:///{store_path}"
    store = ContactStore(store_url)
    store.load_frame(prepared.history[list(contract.names())])
    draws = _Draws(config.seed, prepared.world["contact_id"])
    world = _World(prepared.world, prepared.live, effect, draws, config)

    token = secrets.token_urlsafe(16)
    registry = prepared.settings.registry
    env = {
        "PREDICTOR_REGISTRY__TRACKING_URI": registry.tracking_uri,
        "PREDICTOR_REGISTRY__ARTIFACT_ROOT": str(registry.artifact_root),
        "PREDICTOR_REGISTRY__MODEL_NAME": registry.model_name,
        "PREDICTOR_EMBEDDING__CACHE_DIR": str(prepared.settings.embedding.cache_dir),
        "PREDICTOR_SERVICE__STORE_URL": store_url,
        "PREDICTOR_SERVICE__HOLDOUT_SHARE": str(config.holdout_share),
        "PREDICTOR_SERVICE__EXPERIMENT": config.experiment,
        "PREDICTOR_SERVICE__FOLLOW_UP_THRESHOLD": str(config.follow_up_threshold),
        "PREDICTOR_SERVICE__PLAN_PATH": str(workdir / "no-plan.yaml"),  # the scripts' timing: no mined plan
        "PREDICTOR_API_TOKEN": token,
        "BENTOML_HOME": str(workdir / "bentoml"),
    }
    max_batch = ServiceConfig().max_batch
    told_while_held = 0
    with running_service(env, workdir / "service.log") as service:
        client = httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=300)
        step = pd.Timedelta(hours=config.step_hours)
        t = prepared.live["closed_at"].min().floor("h")
        total = len(prepared.live)
        while world.pending():
            t = t + step
            batch = world.due(t)
            for start in range(0, len(batch), max_batch):
                part = batch[start : start + max_batch]
                bodies = [contact_json(row) for row in part]
                response = client.post("/score_batch", json={"contacts": bodies})
                response.raise_for_status()
                for row, item in zip(part, response.json()["results"], strict=True):
                    if not item["ok"]:
                        raise RuntimeError(
                            f"the service rejected simulated contact {row['contact_id']}: {item['errors']}"
                        )
                    follow_up = item["result"]["follow_up"]
                    told_while_held += bool(follow_up["held_out"] and follow_up["act"])
                    world.scored(row["contact_id"])
                    if follow_up["act"] and draws.complies(row["contact_id"], effect.compliance):
                        sent_at = row["closed_at"] + pd.Timedelta(hours=config.send_delay_hours)
                        report = {
                            "contact_id": row["contact_id"],
                            "sent_at": sent_at.isoformat(),
                            "channel": follow_up["channel"],
                            "template": follow_up["next_issue"] or "check-in",
                        }
                        client.post("/follow_ups", json=report).raise_for_status()
                        world.follow_up(row, sent_at, follow_up)
            if progress:
                progress(world.done, total)
    measured = outcomes(ContactStore(store_url), prepared.settings.labels)
    true_itt, counted = world.true_effect(store, measured, prepared.settings)
    notes = []
    if told_while_held:
        notes.append(f"{told_while_held} held-out contacts were told to act")
    return Deployment(
        effect=effect,
        outcomes=measured,
        true_itt=true_itt,
        counted=counted,
        scored=world.done,
        sent=world.sent,
        prevented=len(world.prevented),
        prompted=len(world.prompted),
        told_to_act_while_held_out=told_while_held,
        notes=notes,
    )


class _Draws:
    """Each contact's own random numbers, fixed before the deployment: both of a contact's worlds (with and
    without a follow-up) use the same ones, so their difference is the effect and nothing else."""

    def __init__(self, seed: int, ids: pd.Series) -> None:
        rng = np.random.default_rng([seed, 17])
        n = len(ids)
        self.index = {cid: k for k, cid in enumerate(ids)}
        self.prevent, self.prompt, self.comply = rng.random(n), rng.random(n), rng.random(n)
        self.prompt_delay_h = rng.uniform(1.0, 24.0, n)

    def complies(self, cid: str, share: float) -> bool:
        return bool(self.comply[self.index[cid]] < share)

    def prevents(self, child: str, origin: str, effect: Effect) -> bool:
        rate = effect.prevent_implicit if origin == "implicit" else effect.prevent_explicit
        return bool(self.prevent[self.index[child]] < rate)

    def prompts(self, cid: str, effect: Effect) -> bool:
        return bool(self.prompt[self.index[cid]] < effect.prompt)


class _World:
    """The simulated contacts as they come to exist: each scored once its cause has been, those a follow-up
    prevented (and their own consequences) never, the ones a follow-up prompted added."""

    def __init__(
        self, world: pd.DataFrame, live: pd.DataFrame, effect: Effect, draws: _Draws, config: DeploymentConfig
    ) -> None:
        self.effect, self.draws, self.config = effect, draws, config
        self.rows = {r["contact_id"]: r for r in world.to_dict("records")}
        self.children: dict[str, list[str]] = {}
        for cid, row in self.rows.items():
            parent = row.get("parent_contact_id")
            if isinstance(parent, str):
                self.children.setdefault(parent, []).append(cid)
        self.queue = [(r["closed_at"], r["contact_id"]) for r in live.to_dict("records")]  # sorted by close
        self.processed = set(world["contact_id"]) - set(live["contact_id"])
        self.prevented: set[str] = set()
        self.prompted: dict[str, dict[str, Any]] = {}
        self.sent_for: dict[str, pd.Timestamp] = {}
        self.done = 0
        self.sent = 0

    def pending(self) -> bool:
        return bool(self.queue)

    def due(self, until: pd.Timestamp) -> list[dict[str, Any]]:
        """The contacts closed by ``until`` whose cause was scored in an earlier step (a repeat whose first
        contact closes in this step waits: that contact's follow-up may yet prevent it)."""
        batch, waiting = [], []
        while self.queue and self.queue[0][0] <= until:
            closed, cid = self.queue.pop(0)
            if cid in self.prevented:
                continue
            parent = self.rows[cid].get("parent_contact_id")
            if isinstance(parent, str) and parent in self.rows and parent not in self.processed:
                waiting.append((closed, cid))
                continue
            batch.append(self.rows[cid])
        for item in waiting:
            bisect.insort(self.queue, item)
        return batch

    def scored(self, cid: str) -> None:
        self.processed.add(cid)
        self.done += 1

    def follow_up(self, row: dict[str, Any], sent_at: pd.Timestamp, follow_up: dict[str, Any]) -> None:
        cid = row["contact_id"]
        self.sent += 1
        self.sent_for[cid] = sent_at
        for child in self.preventable(cid, sent_at):
            self.prevented |= self.subtree(child)  # the repeat, and everything it would have caused
        if self.draws.prompts(cid, self.effect):
            prompted = self.prompt_contact(row, sent_at, follow_up.get("next_issue"), follow_up["channel"])
            self.prompted[prompted["contact_id"]] = prompted
            self.rows[prompted["contact_id"]] = prompted
            bisect.insort(self.queue, (prompted["closed_at"], prompted["contact_id"]))

    def preventable(self, cid: str, sent_at: pd.Timestamp) -> list[str]:
        """The repeats ``cid`` caused that a follow-up sent at ``sent_at`` prevents (by their own draw)."""
        return [
            child
            for child in self.children.get(cid, [])
            if self.rows[child]["origin"] in PREVENTABLE
            and self.rows[child]["opened_at"] > sent_at
            and self.draws.prevents(child, self.rows[child]["origin"], self.effect)
        ]

    def prompt_contact(
        self, row: dict[str, Any], sent_at: pd.Timestamp, issue: str | None, channel: str
    ) -> dict[str, Any]:
        opened = (
            sent_at + pd.Timedelta(hours=float(self.draws.prompt_delay_h[self.draws.index[row["contact_id"]]]))
        ).floor("s")
        return {
            **{name: row[name] for name in contract.names()},
            "contact_id": f"P{row['contact_id']}",
            "opened_at": opened,
            "closed_at": opened + pd.Timedelta(minutes=8),
            "channel": channel,
            "issue": issue or row["issue"],
            "transcript": f"Customer: I got your message about {(issue or row['issue']).replace('_', ' ')}. "
            "I have a question about it. Agent: Of course, let me help.",
            "handle_seconds": 480.0,
            "hold_seconds": 0.0,
            "transfers": 0,
            "csat": float("nan"),
            "origin": "prompted",
            "parent_contact_id": row["contact_id"],
        }

    def subtree(self, cid: str) -> set[str]:
        out = {cid}
        for child in self.children.get(cid, []):
            out |= self.subtree(child)
        return out

    # -- the truth ---------------------------------------------------------------------------------------
    def true_effect(self, store: ContactStore, measured: Outcomes, settings: Settings) -> tuple[float, int]:
        """The mean over counted contacts whose window closed of (repeat without a follow-up) - (with one):
        intention to treat, the ticketing system's compliance included, as the measured difference is."""
        scored = store.scored()
        counted = scored[scored["arm"].notna() & scored["scored"]]
        ids = set(counted["contact_id"])
        arm = dict(zip(counted["contact_id"], counted["arm"], strict=True))
        realised = {cid: row for cid, row in self.rows.items() if cid not in self.prevented}
        by_customer: dict[str, list[str]] = {}
        for cid, row in realised.items():
            by_customer.setdefault(row["customer_id"], []).append(cid)
        end = measured.data_end.at
        window = pd.Timedelta(days=settings.labels.repeat_window_days)
        differences = []
        for cid in sorted(ids):
            row = self.rows[cid]
            if row["closed_at"] + window > end:
                continue  # still open: the measurement leaves it out too
            own = set(by_customer[row["customer_id"]])
            if arm[cid] == TREATED and cid in self.sent_for:
                with_it = own
                without = (own | {k for child in self._prevented_by(cid) for k in self.subtree(child)}) - {f"P{cid}"}
            elif arm[cid] == HELD_OUT and self.draws.complies(cid, self.effect.compliance):
                without = own
                sent_at = row["closed_at"] + pd.Timedelta(hours=self.config.send_delay_hours)
                removed = {k for child in self.preventable(cid, sent_at) for k in self.subtree(child)}
                with_it = own - removed
                if self.draws.prompts(cid, self.effect):
                    extra = self.prompt_contact(row, sent_at, None, row["channel"])
                    self.rows.setdefault(extra["contact_id"], extra)
                    with_it = with_it | {extra["contact_id"]}
            else:  # not sent either way (the ticketing system would not have sent it): no difference
                with_it = without = own
            differences.append(self._repeat(cid, without, settings, end) - self._repeat(cid, with_it, settings, end))
        return (float(np.mean(differences)) if differences else float("nan")), len(differences)

    def _prevented_by(self, cid: str) -> list[str]:
        return [child for child in self.children.get(cid, []) if child in self.prevented]

    def _repeat(self, cid: str, members: set[str], settings: Settings, end: pd.Timestamp) -> int:
        frame = pd.DataFrame([self.rows[k] for k in sorted(members)])[list(contract.names())]
        frame["opened_at"] = pd.to_datetime(frame["opened_at"], utc=True)
        frame["closed_at"] = pd.to_datetime(frame["closed_at"], utc=True)
        labelled = derive(frame, settings.labels, end)
        return int(bool(labelled.loc[labelled["contact_id"] == cid, "is_repeat"].iloc[0]))
