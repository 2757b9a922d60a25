"""Scoring at close time: validated contacts in, answers out, every contact kept in the store.

The BentoML service in ``service/`` is a thin shell around ``Scorer``; everything here runs (and is
tested) without a server too.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from predictor.config import Settings
from predictor.contacts.language import language_of, written
from predictor.contacts.store import (
    ContactStore,
    Experimented,
    FollowUpRecord,
    content_hash,
    lock_path_of,
    records,
    typed_columns,
    typed_contacts,
)
from predictor.features.build import TextViews
from predictor.loop.assignment import HELD_OUT, arm
from predictor.model.fitted import TOP_K, RepeatContactModel
from predictor.reports.plan import FollowUp, FollowUpPlan, follow_up_plan
from predictor.serving.api import (
    BatchItem,
    BatchResponse,
    ContactIn,
    ContentConflict,
    FollowUpConflict,
    FollowUpIn,
    FollowUpOut,
    FollowUpReceipt,
    FollowUpTooEarly,
    HoursToRepeat,
    ItemError,
    NextIssue,
    OutOfTime,
    Reason,
    ScoreResponse,
    UnknownContact,
    contact_example,
    item_errors,
)
from predictor.serving.history import scoring_history
from predictor.serving.locks import locks_for
from predictor.serving.split import RESTART_AFTER_S, Helper, HelperLost, share_cores, shares

log = logging.getLogger(__name__)
UNKNOWN_ISSUE = "other"
# Made-up contacts scored at start: enough for a batch's code paths (the tokenizer's threads take calls of 64
# texts or more, two views a contact).
WARM_UP_CONTACTS = 40


Outcome = ScoreResponse | ContentConflict | OutOfTime


@dataclass
class Scorer:
    model: RepeatContactModel
    model_version: str
    store: ContactStore
    plan: FollowUpPlan
    settings: Settings

    def __post_init__(self) -> None:
        self._locks = locks_for(self.store.lock_path)  # shared by the scorers of this process on this store
        self._helpers: list[Helper] = []
        self._helpers_guard = threading.Lock()  # two batches at once must not both replace a lost helper

    @classmethod
    def from_settings(cls, settings: Settings) -> Scorer:
        """The configured champion (or pinned version), warmed up, with its batch helpers loading."""
        from predictor.registry.tracking import load_version

        # Started first: a helper's imports (most of its start) overlap this process loading the model.
        shared = lock_path_of(settings.service.store_url) is not None  # no other process opens a store in memory
        helpers = [Helper.spawn() for _ in range(settings.service.batch_processes - 1)] if shared else []
        model, version, mined = load_version(settings, settings.service.model_version, serving=True)
        store = ContactStore.for_service(settings.service)
        plan = follow_up_plan(settings.service, mined)
        source = mined or settings.service.plan_path
        if Path(source).exists():
            log.info("model version %s; follow-up timing from its plan %s (%s)", version, source, plan.version)
        else:
            log.info("model version %s has no mined plan: follow-ups from the scripts file only", version)
        scorer = cls(model, version, store, plan, settings)
        scorer.warm_up()
        scorer.attach(helpers)
        return scorer

    def attach(self, helpers: list[Helper]) -> None:
        """Score large batches with these helper processes too (``serving.split``): each is sent this
        scorer's model, plan, settings and store."""
        processes = len(helpers) + len(self._helpers) + 1
        if helpers:
            share_cores(processes)
        for helper in helpers:
            helper.load(self, processes)
        self._helpers.extend(helpers)

    def close(self) -> None:
        """Stop the helper processes (they stop by themselves too, when this process ends) and the store's
        checkpoints."""
        for helper in self._helpers:
            helper.close()
        self._helpers.clear()
        self.store.stop_checkpoints()

    def warm_up(self) -> None:
        """Load the embedding model and touch every code path once, so the first caller waits for nothing.

        Then everything loaded so far (modules, model, store) is moved out of the garbage collector's sight
        (``gc.freeze``): none of it ever becomes garbage, yet each full collection walked all of it (~156k
        objects in a worker: ~100 ms, taken out of whichever request happened to trigger it)."""
        embedder = self.model.embedder(cache=self.settings.service.embedding_cache)
        if embedder is not None:
            embedder.encode(["warm-up"])
        self._score_made_up_batch()
        gc.freeze()

    def _score_made_up_batch(self) -> None:
        """Score a batch of made-up contacts as a real one is scored, storing nothing: a process's first batch
        was ~20% slower than the next (LightGBM's and numpy's larger calls, the tokenizer's threads, the
        word view: each first run in this process). Their customers and agent have no history, so nothing
        is read for them nor kept (``scoring_history`` keeps windows only of an agent's other customers)."""
        contacts = [
            ContactIn.model_validate(
                {
                    **contact_example(),
                    "contact_id": f"warm-up-{k}",
                    "customer_id": f"warm-up-{k}",
                    "agent_id": "warm-up",
                    # Long ones too: a long transcript is tokenized at its two ends only.
                    "transcript": "\n".join(
                        f"{'Customer' if turn % 2 else 'Agent'}: turn {turn} of made-up contact {k}, about a bill."
                        for turn in range(2 + (k % 4) * 12)
                    ),
                }
            )
            for k in range(WARM_UP_CONTACTS)
        ]
        frame, warnings = self._frame(contacts)
        rows = records(frame, list(frame.columns))
        self._score_frame(frame, rows, warnings, self.model.text_views(frame))

    def deadline(self) -> float:
        """When a request that starts now must be done (``ServiceConfig.request_budget_s``)."""
        return time.monotonic() + self.settings.service.request_budget_s

    # -- entry points -------------------------------------------------------------------------------------
    def score(self, contact: ContactIn, deadline: float | None = None) -> ScoreResponse:
        """One contact; raises ``ContentConflict`` when its id was scored with other content, ``OutOfTime``
        when the deadline passes first."""
        result = self._score_all([contact], deadline)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def score_batch(self, items: list[Any], deadline: float | None = None) -> BatchResponse:
        """Validate each item on its own: a bad one is reported, the others are scored (those the deadline
        leaves unscored are reported too, with nothing stored)."""
        valid: list[tuple[int, ContactIn]] = []
        results: dict[int, BatchItem] = {}
        for index, item in enumerate(items):
            contact_id = item.get("contact_id") if isinstance(item, dict) else None
            try:
                valid.append((index, ContactIn.model_validate(item)))
            except ValidationError as exc:
                results[index] = BatchItem(
                    index=index,
                    contact_id=contact_id if isinstance(contact_id, str) else None,
                    ok=False,
                    errors=item_errors(exc),
                )
        scored = self._score_split([c for _, c in valid], deadline) if valid else []
        for (index, contact), response in zip(valid, scored, strict=True):
            if isinstance(response, Exception):
                field = "contact_id" if isinstance(response, ContentConflict) else "contacts"
                error = ItemError(field=field, message=str(response))
                results[index] = BatchItem(index=index, contact_id=contact.contact_id, ok=False, errors=[error])
            else:
                results[index] = BatchItem(index=index, contact_id=contact.contact_id, ok=True, result=response)
        ordered = [results[i] for i in range(len(items))]
        rejected = sum(not item.ok for item in ordered)
        return BatchResponse(results=ordered, scored=len(ordered) - rejected, rejected=rejected)

    def _score_split(self, contacts: list[ContactIn], deadline: float | None) -> list[Outcome]:
        """A large batch shared with the idle helpers (``serving.split``), this process scoring one share
        meanwhile; a share whose helper is lost on the way is scored here."""
        service = self.settings.service
        taken: list[Helper] = []
        if len(contacts) >= service.split_min and self._helpers:
            with self._helpers_guard:
                self._replace_lost_helpers()
                taken = [h for h in self._helpers if h.take()]
        if not taken:
            return self._score_all(contacts, deadline)
        parts = shares(contacts, len(taken) + 1)
        for helper, share in zip(taken, parts[1:], strict=True):
            helper.score([contacts[i] for i in share], deadline)
        try:
            done = self._score_all([contacts[i] for i in parts[0]], deadline)
        finally:  # every taken helper answers (or is lost) before it is given back, whatever happened here
            theirs = [self._share_result(h, [contacts[i] for i in share], deadline) for h, share in
                      zip(taken, parts[1:], strict=True)]  # fmt: skip
        out: list[Outcome | None] = [None] * len(contacts)
        outcomes = [*done, *(outcome for share in theirs for outcome in share)]
        for position, outcome in zip([i for part in parts for i in part], outcomes, strict=True):
            out[position] = outcome
        return out  # type: ignore[return-value]  # every position is filled above

    def _share_result(self, helper: Helper, share: list[ContactIn], deadline: float | None) -> list[Outcome]:
        try:
            return helper.result(deadline)
        except HelperLost as lost:
            # What it stored before it was lost is replayed; past the deadline the rest is reported (a retry
            # replays what was stored).
            log.warning("scoring a share of %d contacts in the worker: %s", len(share), lost)
            return self._score_all(share, deadline)

    def _replace_lost_helpers(self) -> None:
        """A lost helper is replaced (loading in the background; batches are scored without it meanwhile), at
        most once per ``RESTART_AFTER_S`` (one that dies as it starts must not cost a process per batch)."""
        for k, helper in enumerate(self._helpers):
            if helper.lost and time.monotonic() - helper.started > RESTART_AFTER_S:
                self._helpers[k] = Helper.spawn()
                self._helpers[k].load(self, len(self._helpers) + 1)

    def score_share(self, contacts: list[ContactIn], deadline: float | None) -> list[Outcome]:
        """A helper's share of a batch (validated contacts), outcome by outcome."""
        return self._score_all(contacts, deadline)

    def _score_all(self, contacts: list[ContactIn], deadline: float | None) -> list[Outcome]:
        """Idempotent by id *and* content: a contact seen before with the same content gets the stored answer
        (``replayed``), one with other content a ``ContentConflict``; the same id twice in one call likewise.
        Chunk by chunk, each under its own customers' locks; past the deadline the rest is ``OutOfTime``."""
        frame, warnings = self._frame(contacts)
        # The typed rows read once: hashing, scoring and saving read the same values (three reads of a frame
        # of Arrow strings cost ~0.7 ms a /score).
        rows = records(frame, list(frame.columns))
        # Of the contact as sent (an unknown issue code is scored as another, but is not another contact).
        hashes = content_hash(frame, issues=[c.issue.lower() for c in contacts], rows=rows)
        out: list[Outcome | None] = [None] * len(contacts)
        chunk = self.settings.service.batch_chunk
        budget = self.settings.service.request_budget_s
        for start in range(0, len(contacts), chunk):
            positions = list(range(start, min(start + chunk, len(contacts))))
            try:
                if deadline is not None and time.monotonic() >= deadline:
                    raise OutOfTime(budget)
                self._score_chunk(frame, rows, hashes, positions, warnings, deadline, out)
            except OutOfTime as late:
                out[start:] = [late] * (len(contacts) - start)
                break
        return out  # type: ignore[return-value]  # every position is filled above

    def _score_chunk(
        self,
        frame: pd.DataFrame,
        rows: list[dict[str, Any]],
        hashes: list[str],
        positions: list[int],
        warnings: dict[str, list[str]],
        deadline: float | None,
        out: list[Outcome | None],
    ) -> None:
        ids = [rows[p]["contact_id"] for p in positions]
        # The costly part (redaction, embedding) reads no store: done before any lock is taken, for the
        # contacts not answered yet (a replay needs no vector). A single contact is embedded without asking:
        # most are new, and a replay's wasted embedding (~1 ms) costs less than the read every new one paid.
        answered = set() if len(ids) == 1 else {k for k, v in self.store.stored(ids).items() if v.response is not None}
        embedded = [p for p, contact_id in zip(positions, ids, strict=True) if contact_id not in answered]
        text = self.model.text_views(frame.iloc[embedded]) if embedded else None
        keys = [f"contact\0{i}" for i in ids] + [f"customer\0{rows[p]['customer_id']}" for p in positions]
        with self._locks.holding(keys, deadline, self.settings.service.request_budget_s):
            stored = self.store.stored(ids)
            scored_now: dict[str, int] = {}  # id -> the position scored in this chunk
            decisions: list[str] = []
            for position, contact_id in zip(positions, ids, strict=True):
                digest = hashes[position]
                known = stored.get(contact_id)
                # A hash of None: stored before content hashes existed, taken as the same contact.
                same_as_stored = known is not None and known.content_hash in (None, digest)
                if known is not None and known.response is not None:
                    decisions.append("stored" if same_as_stored else "conflict")
                elif known is not None and not same_as_stored:
                    decisions.append("conflict")  # bulk-loaded with other content
                elif contact_id not in scored_now:
                    scored_now[contact_id] = position  # new, or bulk-loaded and never answered
                    decisions.append("fresh")
                else:
                    decisions.append("again" if hashes[scored_now[contact_id]] == digest else "conflict")
            fresh = sorted(scored_now.values())
            answers: dict[str, ScoreResponse] = {}
            if fresh:
                row_of = {p: k for k, p in enumerate(embedded)}
                # Every fresh contact was unanswered before the lock too (an answer is never taken back).
                fresh_text = text.rows([row_of[p] for p in fresh]) if text is not None else None
                fresh_frame, fresh_rows = frame.iloc[fresh], [rows[p] for p in fresh]
                answers, experiments = self._score_frame(fresh_frame, fresh_rows, warnings, fresh_text)
                self.store.save(
                    fresh_frame,
                    {contact_id: answer.model_dump_json() for contact_id, answer in answers.items()},
                    self.model_version,
                    hashes=[hashes[p] for p in fresh],
                    experiments=experiments,
                    rows=fresh_rows,
                )
        for position, contact_id, decision in zip(positions, ids, decisions, strict=True):
            if decision == "fresh":
                out[position] = answers[contact_id]
            elif decision == "again":
                out[position] = answers[contact_id].model_copy(update={"replayed": True})
            elif decision == "stored":
                out[position] = ScoreResponse.model_validate({**stored[contact_id].response, "replayed": True})
            else:
                out[position] = ContentConflict(contact_id)

    def record_follow_up(self, report: FollowUpIn, deadline: float | None = None) -> FollowUpReceipt:
        """Keep a follow-up the ticketing system sent: once per contact (the same report again is a replay).
        Raises ``UnknownContact``, ``FollowUpConflict`` or ``FollowUpTooEarly``."""
        record = FollowUpRecord(report.contact_id, report.sent_at, report.channel, report.template)
        with self._locks.holding([f"follow-up\0{report.contact_id}"], deadline, self.settings.service.request_budget_s):
            status, detail = self.store.record_follow_ups([record])[0]
        if status == "unknown":
            raise UnknownContact(report.contact_id)
        if status == "conflict":
            raise FollowUpConflict(report.contact_id)
        if status == "early":
            raise FollowUpTooEarly(report.contact_id, detail)
        held_out = detail == HELD_OUT
        warnings = []
        if held_out:
            warnings.append(
                "this contact's customer is held out of the follow-up experiment (its answer said act: false); "
                "the follow-up is kept and counted as sent, but it weakens the measured effect"
            )
            log.warning("follow-up sent for held-out contact %s", report.contact_id)
        elif detail is None:
            warnings.append("no follow-up was due for this contact (act: false); kept and counted as sent")
        return FollowUpReceipt(
            contact_id=report.contact_id,
            recorded=status == "recorded",
            replayed=status == "replayed",
            held_out=held_out,
            warnings=warnings,
        )

    # -- internals --------------------------------------------------------------------------------------
    def _frame(self, contacts: list[ContactIn]) -> tuple[pd.DataFrame, dict[str, list[str]]]:
        known = set(self.model.issue_codes)
        warnings: dict[str, list[str]] = {}
        rows = []
        for c in contacts:
            row = c.model_dump()
            issue = row["issue"].lower()
            if issue not in known:
                warnings.setdefault(c.contact_id, []).append(
                    f"unknown issue code '{row['issue']}': scored as '{UNKNOWN_ISSUE}'"
                )
                issue = UNKNOWN_ISSUE
            row["issue"] = issue
            row["language"] = language_of(row["language"], row["transcript"])[0]
            rows.append(row)
        if not rows:
            return typed_contacts(pd.DataFrame()), warnings
        return typed_columns({name: [row[name] for row in rows] for name in rows[0]}), warnings

    def _score_frame(
        self,
        frame: pd.DataFrame,
        rows: list[dict[str, Any]],
        warnings: dict[str, list[str]],
        text: TextViews | None,
    ) -> tuple[dict[str, ScoreResponse], dict[str, Experimented]]:
        """``rows``: the frame's ``records``, read once by the caller."""
        frame = frame.reset_index(drop=True)
        history, windows = scoring_history(self.store, frame, self.model.label_config)
        feature_set = self.model.features(frame, history, text=text, other_windows=windows)
        matrix, columns = self.model.model_matrix(feature_set)  # once, for the predictions and their reasons
        predictions = self.model.prediction_columns(matrix, np.array([row["contact_id"] for row in rows], dtype=object))
        reasons = self.model.reasons_from(matrix, columns)
        service = self.settings.service
        answers = {}
        recommended: dict[str, FollowUp] = {}
        scored: list[tuple[float, list[NextIssue], Any, Any, int]] = []
        # Plain rows: iterating a frame's tuples (Arrow strings) cost ~2 ms a contact.
        predicted = records(predictions, list(predictions))
        for position, (row, contact) in enumerate(zip(_attributes(predicted), _attributes(rows), strict=True)):
            p = float(row.repeat_probability)
            next_issues = [
                NextIssue(
                    issue=getattr(row, f"next_issue_{k}"),
                    probability=round(float(getattr(row, f"next_issue_{k}_probability")), 6),
                    repeat_type="explicit" if getattr(row, f"next_issue_{k}") == contact.issue else "implicit",
                )
                for k in range(1, TOP_K + 1)
                if getattr(row, f"next_issue_{k}") is not None
            ]
            recommended[contact.contact_id] = self.plan.recommend(
                repeat_probability=p,
                next_issue=next_issues[0].issue if next_issues else None,
                contact_issue=contact.issue,
                contact_channel=contact.channel,
                hours_to_repeat_median=float(row.hours_to_repeat_median),
                language=written(contact.language, contact.transcript),
            )
            scored.append((p, next_issues, row, contact, position))
        follow_ups, experiments = self._experiment(rows, recommended)
        for p, next_issues, row, contact, position in scored:
            band = "high" if p >= service.high_risk else "medium" if p >= service.medium_risk else "low"
            response = ScoreResponse(
                contact_id=contact.contact_id,
                model_version=self.model_version,
                repeat_probability=p,
                risk_band=band,
                next_issues=next_issues,
                hours_to_repeat=HoursToRepeat(
                    median=round(float(row.hours_to_repeat_median), 2), p90=round(float(row.hours_to_repeat_p90), 2)
                ),
                reasons=[Reason(**r) for r in reasons[position]],
                follow_up=follow_ups[contact.contact_id],
                warnings=warnings.get(contact.contact_id, []),
            )
            answers[contact.contact_id] = response
        return answers, experiments

    def _experiment(
        self, rows: list[dict[str, Any]], recommended: dict[str, FollowUp]
    ) -> tuple[dict[str, FollowUpOut], dict[str, Experimented]]:
        """The follow-up each contact is told, after the experiment: at most one per customer per cooldown
        (the two halves of a transferred call, a customer back next day), and none for a customer held out.

        A contact counts in the experiment when a follow-up was due and no other of its customer's did within
        the cooldown: in both arms alike, so the arms compare like with like. Contacts in close order, so the
        first of a customer's in one call is the one that counts."""
        service = self.settings.service
        cooldown_hours = service.follow_up_cooldown_hours
        cooldown = pd.Timedelta(hours=cooldown_hours)
        closed = {row["contact_id"]: row["closed_at"] for row in rows}
        due = [cid for cid, follow_up in recommended.items() if follow_up.act]
        customers = {row["contact_id"]: row["customer_id"] for row in rows}
        earlier: dict[str, list] = {}
        if due:
            times = [closed[cid] for cid in due]
            earlier = self.store.experiment_contacts(
                [customers[cid] for cid in due], min(times) - cooldown, max(times) + cooldown
            )
        out: dict[str, FollowUpOut] = {}
        counted: dict[str, Experimented] = {}
        for cid in sorted(recommended, key=lambda k: (closed[k], k)):
            follow_up = recommended[cid]
            send_by = (closed[cid] + pd.Timedelta(hours=follow_up.send_within_hours)).floor("s")
            fields = {**follow_up.__dict__, "send_by": send_by}
            if follow_up.act:
                t = closed[cid]
                near = [
                    (k, when)
                    for k, when, _ in earlier.get(customers[cid], [])
                    if k != cid and abs(when - t) <= cooldown
                ]
                if near:
                    other, when = near[0]
                    fields["act"] = False
                    fields["reason"] = (
                        f"a follow-up was already due for this customer's contact {other} (closed "
                        f"{when:%Y-%m-%d %H:%M} UTC): at most one per customer in {cooldown_hours:g} h"
                    )
                else:
                    chosen = arm(customers[cid], service.experiment, service.holdout_share)
                    counted[cid] = Experimented(service.experiment, chosen, send_by.to_pydatetime())
                    earlier.setdefault(customers[cid], []).append((cid, t, chosen))
                    fields["experiment"] = service.experiment
                    if chosen == HELD_OUT:
                        fields["act"] = False
                        fields["held_out"] = True
                        fields["reason"] = (
                            f"held out: this customer is in the control group of experiment '{service.experiment}' "
                            f"({service.holdout_share:.0%} of customers get no follow-up, so its effect can be "
                            f"measured); a follow-up was due ({follow_up.reason}): send nothing"
                        )
            out[cid] = FollowUpOut(**fields)
        return out, counted


def _attributes(rows: list[dict[str, Any]]) -> list[SimpleNamespace]:
    """Rows (``records``) as attribute records."""
    return [SimpleNamespace(**row) for row in rows]
