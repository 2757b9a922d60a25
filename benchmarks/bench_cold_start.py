"""The scoring service's cold start: a fresh process until ``Scorer.from_settings`` is ready.

    .venv/bin/python benchmarks/bench_cold_start.py [--runs 3]

Trains a small model (1,500 simulated contacts, text included, embeddings from the shared cache), registers
it in a throwaway MLflow store, then starts fresh Python processes that (a) only unpickle the full model bundle
with ``predictor.model.fitted`` — the baseline, what a scorer paid before the lean copy — and (b) build the
service's ``Scorer`` as its worker does (LightGBM without scikit-learn; registry lookup, the model's lean copy,
contact store, follow-up plan, embedder warm-up). Prints the median seconds of
each, their ratio, and which heavy modules the scorer's process imported (training code and matplotlib
have no business there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HEAVY = (
    "predictor.training.train", "predictor.model.evaluate", "matplotlib", "predictor.compute", "distributed", "sklearn",
    "scipy.stats",
)  # fmt: skip

BASELINE = """
import sys, time
t = time.perf_counter()
import joblib
import predictor.model.fitted
joblib.load(sys.argv[1])
print(time.perf_counter() - t)
"""
SCORER = """
import json, sys, time
t = time.perf_counter()
from predictor.model.lean import lightgbm_alone
lightgbm_alone()  # as the service's worker does
from predictor.config import get_settings
from predictor.serving.scorer import Scorer
Scorer.from_settings(get_settings())
print(json.dumps({"seconds": time.perf_counter() - t, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def _run(code: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from predictor.config import EmbeddingConfig, RegistryConfig, ServiceConfig, Settings
    from predictor.contacts.schema import validate
    from predictor.contacts.simulate import SimulatorConfig, simulate
    from predictor.registry.tracking import log_and_register
    from predictor.training.train import fit

    folder = Path(tempfile.mkdtemp(prefix="cold-start-"))
    cache = os.environ.get("PREDICTOR_TEST_CACHE", str(Path.home() / ".cache" / "predictor-bench"))
    registry = RegistryConfig(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", artifact_root=folder / "artifacts")
    service = ServiceConfig(store_url=f"sqlite:///{folder / 'store.db'}", plan_path=folder / "plan.yaml")
    settings = Settings(embedding=EmbeddingConfig(cache_dir=cache), registry=registry, service=service)
    contacts = validate(simulate(SimulatorConfig(n_contacts=1500, seed=3, days=90)).contacts).contacts
    registration = log_and_register(fit(contacts, settings, ablation=False), settings, contacts)
    bundle = next((folder / "artifacts").rglob("model.joblib"))
    env = {
        **os.environ,
        "PREDICTOR_REGISTRY__TRACKING_URI": registry.tracking_uri,
        "PREDICTOR_REGISTRY__ARTIFACT_ROOT": str(registry.artifact_root),
        "PREDICTOR_SERVICE__STORE_URL": service.store_url,
        "PREDICTOR_SERVICE__PLAN_PATH": str(service.plan_path),
        "PREDICTOR_EMBEDDING__CACHE_DIR": cache,
    }
    baseline = [float(_run(BASELINE, env, str(bundle))) for _ in range(args.runs)]
    scorer = [json.loads(_run(f"HEAVY = {HEAVY!r}\n{SCORER}", env)) for _ in range(args.runs)]
    base, cold = statistics.median(baseline), statistics.median(s["seconds"] for s in scorer)
    print(f"model v{registration.version}; {args.runs} fresh processes each")
    print(f"baseline (unpickle the full bundle): {base:6.2f} s")
    print(f"service cold start (Scorer ready):   {cold:6.2f} s  ({cold / base:.2f}x the baseline)")
    print(f"heavy modules imported by the scorer: {', '.join(scorer[0]['heavy']) or 'none'}")


if __name__ == "__main__":
    main()
