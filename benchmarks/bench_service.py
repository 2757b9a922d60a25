"""Service benchmark over loopback HTTP: /score latency and /score_batch throughput.

    .venv/bin/python benchmarks/bench_service.py            # trains a small champion first if needed

Every request carries a transcript never seen before (a unique tag is appended), so the embedding cache
cannot flatter the figures. The baseline, measured in the same run, is the raw embedding time of the same
texts in this process: the difference is what the service adds (HTTP, validation, history, store).
Bounded: a fixed number of sequential requests. Results go to bench-results/service.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import results

from predictor.config import PACKAGE_DATA, EmbeddingConfig, RegistryConfig, Settings
from predictor.contacts.schema import validate
from predictor.contacts.simulate import SimulatorConfig, simulate
from predictor.contacts.store import ContactStore
from predictor.features.build import text_views
from predictor.features.embed import Embedder
from predictor.registry.tracking import log_and_register
from predictor.serving.api import contact_json
from predictor.serving.devserver import running_service
from predictor.training.train import fit

# Issue #15's figures of this benchmark on this machine before the service work (two runs), and its targets.
BEFORE = {"score_long_p50": "42.6 / 60.8", "score_long_p99": "75 / 144", "batch_per_s": "475 / 398", "ready_s": "~18"}
TARGET_MS = {"p50": 20, "p99": 50}  # /score, long transcript
TARGET = {"score_long_p50": f"<= {TARGET_MS['p50']}", "score_long_p99": f"<= {TARGET_MS['p99']}",
          "batch_per_s": ">= 1,500", "ready_s": "<= 5"}  # fmt: skip
# The issue's HTTP floor (GET /readyz p50) and its first run: the targets as multiples of the floor, which this
# machine's speed swings (1.0 to 2.3 ms) move together with everything else.
ISSUE_FLOOR_MS = 2.3
ISSUE_FIRST_RUN_MS = {"p50": 42.6, "p99": 75}
LONG_FILLER = " ".join(["I have been waiting for this for quite a while and I checked the app twice already."] * 20)


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, got {text!r}")
    return int(text)


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.array(values) * 1000
    return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=positive, default=100, help="/score calls of each kind")
    parser.add_argument("--batch", type=positive, default=200, help="contacts per /score_batch call")
    parser.add_argument("--batches", type=positive, default=5, help="/score_batch calls (the median is reported)")
    parser.add_argument("--store-contacts", type=int, default=20_000, help="contacts simulated, trained on, stored")
    parser.add_argument(
        "--agents", type=positive, default=SimulatorConfig().n_agents,
        help="agents in the simulated centre (the default's handle ~1.4 contacts a day; 5 make a busy one, ~22)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--backend", action="append", choices=["model2vec", "sentence-transformers", "onnx-int8", "e5-static", "e5"],
        help="repeatable: each trained, served and measured in this run, the first the baseline (default model2vec)",
    )  # fmt: skip
    parser.add_argument("--language", default="en", choices=["en", "ru", "be", "sr", "mixed"],
                        help="language of the simulated store and of the long transcripts")  # fmt: skip
    args = parser.parse_args()
    reports = [run(backend, args) for backend in args.backend or ["model2vec"]]
    if len(reports) > 1:
        base = reports[0]
        lines = [
            f"| backend ({args.language} transcripts) | /score long p50 / p99 ms | vs {base['backend']} p50 | "
            "/score_batch /s | raw embedding long p50 ms |",
            "|---|---|---|---|---|",
        ]
        for r in reports:
            h = r["score_long"]["http_ms"]
            ratio = h["p50"] / base["score_long"]["http_ms"]["p50"]
            lines.append(
                f"| {r['backend']} | {h['p50']} / {h['p99']} | {ratio:.2f}x | "
                f"{r['score_batch']['contacts_per_second']} | {r['score_long']['raw_embedding_ms']['p50']} |"
            )
        results.write(args.out, f"service-{args.language}-backends", reports, lines)


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds of these processes, every thread of each."""
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def long_transcript(language: str) -> str:
    """A long transcript in the language: its simulated small talk, several times over."""
    if language in ("en", "mixed"):
        return LONG_FILLER
    from predictor.contacts.simulate import phrases

    lines = phrases(language)
    speakers = lines["SPEAKERS"]
    turns = [f"{speakers[who.lower()]}: {text}" for who, text in lines["FILLER"]]
    return " ".join(turns * 2)


def run(backend: str, args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    settings = Settings(
        embedding=EmbeddingConfig(cache_dir=work / "cache", backend=backend),
        registry=RegistryConfig(tracking_uri=f"sqlite:///{work / 'mlflow.db'}", artifact_root=work / "art"),
    )
    # A store the size of a real one (months of contacts): history look-ups cost what they would in use.
    days = max(30, round(180 * args.store_contacts / 20_000))
    simulated = simulate(
        SimulatorConfig(n_contacts=args.store_contacts, seed=3, days=days, language=args.language, n_agents=args.agents)
    )
    contacts = validate(simulated.contacts).contacts
    result = fit(contacts, settings, ablation=False)
    log_and_register(result, settings, contacts)
    history = contacts.sort_values("closed_at").iloc[:-300]
    fresh = contacts.sort_values("closed_at").iloc[-300:]
    store_url = f"sqlite:///{work / 'store.db'}"
    ContactStore(store_url).load_frame(history)

    env = {
        "PREDICTOR_REGISTRY__TRACKING_URI": settings.registry.tracking_uri,
        "PREDICTOR_REGISTRY__ARTIFACT_ROOT": str(settings.registry.artifact_root),
        "PREDICTOR_EMBEDDING__CACHE_DIR": str(work / "cache"),
        "PREDICTOR_SERVICE__STORE_URL": store_url,
        "PREDICTOR_SERVICE__SCRIPTS_PATH": str(PACKAGE_DATA / "followup_scripts.yaml"),
    }
    rows = fresh.to_dict("records")
    report: dict = {}
    embedder = Embedder(EmbeddingConfig(cache_dir=work / "raw-cache", backend=backend))
    long_text = long_transcript(args.language)
    embedder.encode(["warm up"])
    started = time.perf_counter()
    with running_service(env, work / "service.log") as service:
        report["ready_seconds"] = round(time.perf_counter() - started, 1)
        client = httpx.Client(base_url=service.base_url, timeout=120)
        floor = []
        for _ in range(args.requests):  # what any call costs here: loopback HTTP through BentoML, no work
            started = time.perf_counter()
            client.get("/readyz").raise_for_status()
            floor.append(time.perf_counter() - started)
        report["http_floor_ms"] = percentiles(floor)
        for kind in ("short", "long"):
            latencies, texts = [], []
            for k in range(args.requests):
                row = dict(rows[k % len(rows)])
                row["contact_id"] = f"bench-{kind}-{k}"
                base = "Customer: my bill is wrong. Agent: fixed." if kind == "short" else long_text
                row["transcript"] = f"{base} (ref {kind}{k})"
                texts.append(row["transcript"])
                started = time.perf_counter()
                response = client.post("/score", json=contact_json(row))
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
            raw = []
            for text in texts:  # baseline: the same texts, embedded in-process
                started = time.perf_counter()
                embedder.encode([text + " raw"])
                raw.append(time.perf_counter() - started)
            report[f"score_{kind}"] = {"http_ms": percentiles(latencies), "raw_embedding_ms": percentiles(raw)}
        server = [psutil.Process(service.process.pid), *psutil.Process(service.process.pid).children(recursive=True)]
        # Several batches, the median reported: one 200-contact call lasts ~0.3 s, within which this machine's
        # speed can swing by a third.
        rates, batch_seconds, batch_cpu = [], 0.0, 0.0
        for n in range(args.batches):
            bodies = []
            for k in range(args.batch):
                row = dict(rows[k % len(rows)])
                row["contact_id"] = f"bench-batch-{n}-{k}"
                row["transcript"] = f"{row['transcript']} (batch {n} ref {k})"
                bodies.append(contact_json(row))
            cpu_before = _cpu_seconds(server)
            started = time.perf_counter()
            response = client.post("/score_batch", json={"contacts": bodies})
            seconds = time.perf_counter() - started
            batch_cpu += _cpu_seconds(server) - cpu_before
            response.raise_for_status()
            rates.append(args.batch / seconds)
            batch_seconds += seconds
        scored = args.batch * args.batches
        started = time.perf_counter()
        embedder.encode([b["transcript"] + " raw" for b in bodies])
        raw_batch = time.perf_counter() - started
        # What the service embeds of each contact: the whole conversation and its closing turns (two views).
        started, cpu_started = time.perf_counter(), time.process_time()
        text_views([b["transcript"] + " views" for b in bodies], embedder)
        raw_views, views_cpu = time.perf_counter() - started, time.process_time() - cpu_started
        cores = os.cpu_count() or 1
        median = float(np.median(rates))
        report["score_batch"] = {
            "contacts": args.batch,
            "batches": args.batches,
            "seconds": round(batch_seconds, 2),
            "contacts_per_second": round(median, 1),
            "contacts_per_second_each": [round(r, 1) for r in rates],
            "raw_embedding_contacts_per_second": round(args.batch / raw_batch, 1),
            "raw_text_views_contacts_per_second": round(args.batch / raw_views, 1),
            "service_over_raw": round(args.batch / median / raw_batch, 2),
            # CPU time (every thread, user + system) per contact, and what all cores could do at that cost: a
            # ceiling no scheduling of this work across processes or threads can pass.
            "service_cpu_ms_per_contact": round(batch_cpu / scored * 1000, 3),
            "service_ceiling_contacts_per_second": round(cores * scored / batch_cpu, 1),
            "text_views_cpu_ms_per_contact": round(views_cpu / args.batch * 1000, 3),
            "text_views_ceiling_contacts_per_second": round(cores * args.batch / views_cpu, 1),
            "cores": cores,
        }
        report["service_rss_mb"] = round(sum(p.memory_info().rss for p in server) / 2**20)
    report["backend"] = backend
    report["language"] = args.language
    report["store_contacts"] = len(history)
    report["agents"] = args.agents
    lines = ["| measure | HTTP p50 / p95 / p99 ms | raw embedding p50 / p95 / p99 ms |", "|---|---|---|"]
    f = report["http_floor_ms"]
    lines.append(f"| GET /readyz (HTTP floor) | {f['p50']} / {f['p95']} / {f['p99']} | - |")
    for kind in ("short", "long"):
        h, r = report[f"score_{kind}"]["http_ms"], report[f"score_{kind}"]["raw_embedding_ms"]
        http = f"{h['p50']} / {h['p95']} / {h['p99']}"
        raw = f"{r['p50']} / {r['p95']} / {r['p99']}"
        lines.append(f"| /score, {kind} transcript | {http} | {raw} |")
    b = report["score_batch"]
    lines += [
        "",
        f"/score_batch: {b['batches']} calls of {b['contacts']} contacts, median {b['contacts_per_second']} "
        f"contacts/s (each: {', '.join(f'{r:.0f}' for r in b['contacts_per_second_each'])}) "
        f"(raw embedding alone: {b['raw_embedding_contacts_per_second']}/s, both of the model's text views "
        f"{b['raw_text_views_contacts_per_second']}/s; "
        f"service / raw time = {b['service_over_raw']}x)",
        f"CPU per contact (every thread): the service {b['service_cpu_ms_per_contact']} ms, its text views alone "
        f"{b['text_views_cpu_ms_per_contact']} ms; at those costs {b['cores']} cores could do at most "
        f"{b['service_ceiling_contacts_per_second']} and {b['text_views_ceiling_contacts_per_second']} contacts/s",
        f"service RSS: {report['service_rss_mb']} MB; contact store: {report['store_contacts']:,} contacts of "
        f"{report['agents']} agents",
    ]
    long = report["score_long"]["http_ms"]
    lines += [
        "",
        "| against issue #15 | today | target | before |",
        "|---|---|---|---|",
        f"| /score long p50 ms | {long['p50']} | {TARGET['score_long_p50']} | {BEFORE['score_long_p50']} |",
        f"| /score long p99 ms | {long['p99']} | {TARGET['score_long_p99']} | {BEFORE['score_long_p99']} |",
        *[
            f"| /score long {q} / HTTP floor | {long[q] / f['p50']:.1f}x | <= {TARGET_MS[q] / ISSUE_FLOOR_MS:.1f}x | "
            f"{ISSUE_FIRST_RUN_MS[q] / ISSUE_FLOOR_MS:.1f}x |"
            for q in ("p50", "p99")
        ],
        f"| /score_batch contacts/s | {b['contacts_per_second']} | {TARGET['batch_per_s']} | {BEFORE['batch_per_s']} |",
        f"| start to ready s | {report['ready_seconds']} | {TARGET['ready_s']} | {BEFORE['ready_s']} |",
        f"(HTTP floor p50 {f['p50']} ms in this run, {ISSUE_FLOOR_MS} ms in the issue's)",
    ]
    suffix = "" if args.language == "en" else f"-{args.language}"
    results.write(args.out, f"service-{backend}{suffix}", report, lines)
    return report


if __name__ == "__main__":
    main()
