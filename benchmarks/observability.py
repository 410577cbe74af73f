"""What observability costs: the request hooks (access log + metrics) per request, ``/metrics`` per scrape, and
the re-embedding checks per gallery size.

    python -m benchmarks.observability [--requests 2000] [--faces 2000] [--dim 512]

Requests go through Flask's test client to ``GET /health`` (the cheapest route, so the hooks' share is as large
as it gets) with the hooks off, metrics only, and metrics plus the access log (written to a null handler);
the checks run :func:`modules.embedders.checks.check_gallery` on random unit vectors, two faces a person.
Medians of 7 rounds, the set-ups taking turns.  The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _median(fn, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def request_costs(n: int, rounds: int = 7) -> dict[str, float]:
    """Microseconds per ``GET /health`` with each set-up, measured in alternation (the machine's drift cancels)."""
    from modules.recognizer import FaceRecognizer
    from modules.settings import MetricsSettings, Settings
    from modules.web import create_app

    access = logging.getLogger("facerec.access")
    access.addHandler(logging.NullHandler())
    access.propagate = False
    access.setLevel(logging.INFO)
    rec = FaceRecognizer()
    setups = {"off": MetricsSettings(enabled=False, access_log=False),
              "metrics": MetricsSettings(enabled=True, access_log=False),
              "metrics_and_access_log": MetricsSettings(enabled=True, access_log=True)}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        apps = {name: create_app(Settings(data_dir=Path(d) / name, metrics=m), recognizer=rec)
                for name, m in setups.items()}
        clients = {name: app.test_client() for name, app in apps.items()}
        times: dict[str, list[float]] = {name: [] for name in setups}
        for i in range(rounds + 1):
            for name, client in clients.items():
                t0 = time.perf_counter()
                for _ in range(n):
                    client.get("/health")
                if i:  # the first round warms up
                    times[name].append(time.perf_counter() - t0)
        for name in setups:
            out[f"health_us_{name}"] = round(statistics.median(times[name]) / n * 1e6, 1)
        out["scrape_ms"] = round(_median(lambda: clients["metrics"].get("/metrics")) * 1e3, 2)
        for app in apps.values():
            app.extensions["facerec"].close()
    return out


def check_costs(faces: int, dim: int) -> dict[str, float]:
    from modules.embedders.checks import check_gallery

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(faces, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    people = np.arange(faces) // 2
    galleries = np.zeros(faces, int)
    seconds = _median(lambda: check_gallery(emb, galleries, people, "bench", old=emb))
    return {f"reembed_checks_ms_{faces}_faces_{dim}d": round(seconds * 1e3, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--faces", type=int, default=2000, help="faces the re-embedding checks run on (at most 2000)")
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args(argv)
    figures = {**request_costs(args.requests), **check_costs(args.faces, args.dim),
               "cpus": os.cpu_count(), "python": platform.python_version()}
    for k, v in figures.items():
        print(f"{k}: {v}", file=sys.stderr)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
