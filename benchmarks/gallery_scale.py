"""Gallery search at scale: exact numpy, the embedded HNSW index and pgvector on up to 10^6 faces.

    python -m benchmarks.gallery_scale --n 1000000 [--backends numpy,ann,pgvector] [--queries 1000]

The gallery holds real SFace embeddings of the LFW dev images (every image that
is not a probe, under its LFW identity) plus synthetic people drawn to match
them (see :func:`fit_synthetic`), about two faces per person.  Queries are half
real probes (held-out images of enrolled LFW people and of never-enrolled ones)
and half synthetic probes (a fresh face of a synthetic person).  The exact
top-1 person of every query (the person of its nearest face) is the ground
truth for recall@1.

Each backend runs in a fresh process so that its memory and start-up are its
own: ``numpy`` is the SQLite gallery with ``ann_threshold=None`` (the whole
gallery as one float32 matrix), ``ann`` is the SQLite gallery with its
hnswlib index (cold: built from the database; warm: loaded from the saved
index and caught up), ``pgvector`` is the PostgreSQL gallery against a
throwaway PostgreSQL 16 + pgvector 0.6.2 server started from the ``pgserver``
package (or ``--pg-url``).  Measured per backend: top-1 search latency p50/p99
(one query per call, as the API does), recall@1 against exact search, memory
(process RSS; for pgvector also the server's PSS and the index size),
enrollment throughput through the store's ``add_faces_many`` (bulk, and one
small batch at a time with searches in between), and start-up time (open +
index load/build until the first answer).

The last line printed is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw"
GALLERY = "bench"


# --- data ------------------------------------------------------------------------------------
@dataclass
class Real:
    paths: list[str]
    identity: list[str]
    emb: np.ndarray  # (n, d) unit rows
    probe: np.ndarray  # bool: held out as a query
    model_id: str


def load_real(lfw: Path = LFW) -> Real:
    """SFace embeddings of every LFW dev image (cached in .cache/embeddings by benchmarks.devdata)."""
    from benchmarks.devdata import embed_images, read_csv
    from modules.recognizer import FaceRecognizer

    rows = read_csv(lfw / "manifest.csv")
    probes = {r["path"] for r in read_csv(lfw / "identification" / "probes.csv")}
    rec = FaceRecognizer()
    got = embed_images(rec, lfw, [r["path"] for r in rows], progress=False).embeddings
    rows = [r for r in rows if r["path"] in got]
    return Real(
        paths=[r["path"] for r in rows],
        identity=[r["identity"] for r in rows],
        emb=np.stack([got[r["path"]] for r in rows]).astype(np.float32),
        probe=np.array([r["path"] in probes for r in rows]),
        model_id=rec.model_id,
    )


@dataclass
class Synth:
    """A generative model of face embeddings fitted to real ones.

    Identity centres: a Gaussian fitted to the directions of real identity means
    (identities with >= 2 images), covariance shrunk 10% toward its diagonal (a
    few hundred identities for 128 dimensions).  A face: ``rho * centre + noise``
    renormalised, where ``rho`` is the median length of a real identity mean and
    the noise is Gaussian with the pooled within-identity covariance of the real
    faces (deviations from their identity mean, scaled by n/(n-1)).  So the
    spread of a person's faces and the spread of people over the sphere both
    follow the real data; the check in the output compares same-person and
    nearest-other-person similarities of real and synthetic faces.
    """

    mu: np.ndarray
    centre_chol: np.ndarray
    rho: float
    within_chol: np.ndarray

    def centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        c = self.mu + rng.standard_normal((n, self.mu.size), dtype=np.float32) @ self.centre_chol.T
        return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)

    def faces(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal(centres.shape, dtype=np.float32) @ self.within_chol.T
        x = self.rho * centres + noise
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fit_synthetic(real: Real) -> Synth:
    by: dict[str, list[int]] = {}
    for i, ident in enumerate(real.identity):
        by.setdefault(ident, []).append(i)
    means, resid, lengths = [], [], []
    for idx in by.values():
        if len(idx) < 2:
            continue
        e = real.emb[idx].astype(np.float64)
        m = e.mean(axis=0)
        lengths.append(np.linalg.norm(m))
        means.append(m / np.linalg.norm(m))
        resid.append((e - m) * np.sqrt(len(idx) / (len(idx) - 1)))
    means = np.stack(means)
    resid = np.concatenate(resid)
    d = means.shape[1]

    def chol(cov: np.ndarray, shrink: float) -> np.ndarray:
        cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov))
        return np.linalg.cholesky(cov + 1e-9 * np.eye(d)).astype(np.float32)

    return Synth(
        mu=means.mean(axis=0).astype(np.float32),
        centre_chol=chol(np.cov(means, rowvar=False), 0.1),
        rho=float(np.median(lengths)),
        within_chol=chol(resid.T @ resid / len(resid), 0.1),
    )


def similarity_profile(emb: np.ndarray, person: np.ndarray, rng: np.random.Generator, n: int = 400) -> dict:
    """Same-person cosine (mean) and each face's nearest other-person cosine (mean, p99) for a sample."""
    idx = rng.choice(len(emb), size=min(n, len(emb)), replace=False)
    sims = emb[idx] @ emb.T
    same, other = [], []
    for row, i in enumerate(idx):
        mine = person == person[i]
        mine[i] = False
        if mine.any():
            same.append(float(sims[row, mine].mean()))
        s = sims[row].copy()
        s[person == person[i]] = -np.inf
        other.append(float(s.max()))
    return {
        "same_person_mean": round(float(np.mean(same)), 4) if same else None,
        "nearest_other_mean": round(float(np.mean(other)), 4),
        "nearest_other_p99": round(float(np.percentile(other, 99)), 4),
    }


@dataclass
class Dataset:
    emb: np.ndarray  # (N, d) gallery faces
    person: np.ndarray  # (N,) person index
    names: list[str]
    queries: np.ndarray  # (Q, d)
    query_kind: list[str]  # real_known / real_unknown / synthetic
    query_truth: list[str]  # the person the probe shows ("" for never-enrolled)
    extra: np.ndarray  # faces of new synthetic people, for enrollment-with-search tests
    check: dict[str, Any]
    model_id: str


def make_dataset(n: int, n_queries: int, seed: int = 0, lfw: Path = LFW) -> Dataset:
    rng = np.random.default_rng(seed)
    real = load_real(lfw)
    synth = fit_synthetic(real)
    # real part: every non-probe image under its identity
    keep = ~real.probe
    real_names = sorted({real.identity[i] for i in np.flatnonzero(keep)})
    name_idx = {nm: i for i, nm in enumerate(real_names)}
    r_emb = real.emb[keep]
    r_person = np.array([name_idx[real.identity[i]] for i in np.flatnonzero(keep)])
    n_real = min(len(r_emb), n)
    r_emb, r_person = r_emb[:n_real], r_person[:n_real]
    # synthetic part: people with 1-3 faces (2 on average)
    n_syn = n - n_real
    counts = rng.integers(1, 4, size=max(n_syn, 1))
    cum = np.cumsum(counts)
    n_people = int(np.searchsorted(cum, n_syn) + 1) if n_syn else 0
    counts = counts[:n_people]
    if n_people:
        counts[-1] -= int(cum[n_people - 1] - n_syn)
    centres = synth.centres(n_people, rng) if n_people else np.zeros((0, real.emb.shape[1]), np.float32)
    s_person = np.repeat(np.arange(n_people), counts)
    s_emb = np.empty((n_syn, real.emb.shape[1]), np.float32)
    for s in range(0, n_syn, 200_000):
        s_emb[s : s + 200_000] = synth.faces(centres[s_person[s : s + 200_000]], rng)
    names = real_names + [f"syn-{i:07d}" for i in range(n_people)]
    emb = np.concatenate([r_emb, s_emb])
    person = np.concatenate([r_person, s_person + len(real_names)])
    # queries: half real probes, half fresh faces of synthetic people
    probe_idx = np.flatnonzero(real.probe)
    n_real_q = min(len(probe_idx), n_queries - n_queries // 2 if n_people else n_queries)
    probe_idx = rng.choice(probe_idx, size=n_real_q, replace=False)
    syn_q = rng.choice(n_people, size=n_queries - n_real_q, replace=True) if n_people else np.zeros(0, int)
    queries = np.concatenate([real.emb[probe_idx], synth.faces(centres[syn_q], rng) if len(syn_q) else
                              np.zeros((0, real.emb.shape[1]), np.float32)])
    kinds = ["real_known" if real.identity[i] in name_idx else "real_unknown" for i in probe_idx] + [
        "synthetic"
    ] * len(syn_q)
    truth = [real.identity[i] if real.identity[i] in name_idx else "" for i in probe_idx] + [
        names[len(real_names) + int(j)] for j in syn_q
    ]
    extra = synth.faces(synth.centres(3000, rng), rng)
    sample = rng.choice(len(s_emb), size=min(len(s_emb), 200_000), replace=False) if n_syn else np.zeros(0, int)
    check = {
        "real": similarity_profile(real.emb, np.array([hash(x) for x in real.identity]), rng),
        "synthetic": similarity_profile(s_emb[sample], s_person[sample], rng) if n_syn else None,
        "real_faces": int(n_real),
        "real_people": len(real_names),
        "synthetic_people": int(n_people),
    }
    return Dataset(emb, person, names, queries.astype(np.float32), kinds, truth, extra, check, real.model_id)


def exact_top1(ds: Dataset, block: int = 64) -> np.ndarray:
    """Index into ``ds.names`` of each query's top-1 person (the person of its nearest face)."""
    out = np.empty(len(ds.queries), np.int64)
    for s in range(0, len(ds.queries), block):
        sims = ds.queries[s : s + block] @ ds.emb.T
        out[s : s + block] = ds.person[np.argmax(sims, axis=1)]
    return out


# --- measuring ------------------------------------------------------------------------------
def rss_mb(pid: int | str = "self") -> dict[str, float]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return {"rss_mb": out.get("VmRSS"), "peak_rss_mb": out.get("VmHWM")}


def pss_of_server(postmaster_pid: int) -> float:
    """Sum of PSS (shared memory counted once) over the PostgreSQL server's processes, in MB."""
    pids = [postmaster_pid]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == postmaster_pid:
                pids.append(int(d.name))
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def latencies(store: Any, queries: np.ndarray, model_id: str, top_k: int = 1) -> tuple[dict, list[str]]:
    times, top = [], []
    for q in queries:
        t = time.perf_counter()
        res = store.search(GALLERY, q, model_id, top_k=top_k)[0]
        times.append((time.perf_counter() - t) * 1000)
        top.append(res[0].person if res else "")
    ms = np.array(times)
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }, top


def enroll_with_searches(store: Any, extra: np.ndarray, model_id: str, batches: int, per_batch: int) -> dict:
    """Small enrollments (``per_batch`` faces of new people) each followed by a search, as a live service does;
    then the same people deleted one by one (the gallery is left as it was)."""
    from modules.storage import NewFace

    add_ms, search_ms = [], []
    names = []
    for b in range(batches):
        faces = extra[b * per_batch : (b + 1) * per_batch]
        batch = {f"live-{os.getpid()}-{b}-{i}": [NewFace(f, model_id)] for i, f in enumerate(faces)}
        names += list(batch)
        t = time.perf_counter()
        store.add_faces_many(GALLERY, batch)
        add_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        top = store.search(GALLERY, faces[0], model_id, top_k=1)[0]
        search_ms.append((time.perf_counter() - t) * 1000)
        assert top and top[0].person == f"live-{os.getpid()}-{b}-0", "a fresh enrollment was not found"
    t = time.perf_counter()
    for name in names:
        store.delete_person(GALLERY, name)
    delete_s = time.perf_counter() - t
    gone = store.search(GALLERY, extra[0], model_id, top_k=1)[0]
    assert not gone or not gone[0].person.startswith("live-"), "a deleted person was found"
    return {
        "deletes_per_s": round(len(names) / delete_s, 1),
        "batches": batches,
        "faces_per_batch": per_batch,
        "faces_per_s": round(batches * per_batch / (sum(add_ms) / 1000), 1),
        "add_p50_ms": round(float(np.median(add_ms)), 2),
        "search_after_write_p50_ms": round(float(np.median(search_ms)), 2),
        "search_after_write_p99_ms": round(float(np.percentile(search_ms, 99)), 2),
    }


def worker(args: dict) -> dict:
    """One backend in a fresh process: open, first answer, latency sweep, live enrollment."""
    from modules.storage import open_gallery
    from modules.storage.ann import HnswParams

    queries = np.load(args["queries"])
    extra = np.load(args["extra"])[args.get("extra_offset", 0) :]
    model_id = args["model_id"]
    before = rss_mb()
    t0 = time.perf_counter()
    if args["kind"] == "pgvector":
        store = open_gallery(args["url"], ann_threshold=args["threshold"], ann_autobuild="off")
    else:
        params = HnswParams(m=args["m"], ef_construction=args["ef_construction"], ef_search=args["sweep"][0][1],
                            refine_ef=args.get("refine_ef", 0))
        store = open_gallery(
            args["db"],
            ann_threshold=None if args["kind"] == "numpy" else args["threshold"],
            ann_params=params,
            ann_persist=True,
        )
    opened = time.perf_counter() - t0
    store.search(GALLERY, queries[0], model_id, top_k=1)
    startup = time.perf_counter() - t0
    out: dict[str, Any] = {
        "startup_s": round(startup, 2),
        "open_s": round(opened, 2),
        "rss_before_open_mb": before["rss_mb"],
        **rss_mb(),
        "index": store.search_index_info(GALLERY),
    }
    if args["kind"] == "ann":
        out["index_built"] = store.ann_builds
        out["index_loaded"] = store.ann_loads
    sweeps = {}
    tops = {}
    for label, ef, margin in args["sweep"]:
        if args["kind"] == "ann":
            store.set_search_params(ef_search=ef, refine_margin=margin)
            refined = store.ann_refined
        elif args["kind"] == "pgvector":
            store.ef_search, store.refine_margin = ef, margin
        lat, top = latencies(store, queries, model_id, args["top_k"])
        if args["kind"] == "ann":
            lat["refined_fraction"] = round((store.ann_refined - refined) / len(queries), 3)
        sweeps[label] = lat
        tops[label] = top
    out["latency"] = sweeps
    np.save(args["tops"], np.array([tops[k] for k in sweeps], dtype=object), allow_pickle=True)
    if args.get("live_batches"):
        _, ef, margin = args["sweep"][0]
        if args["kind"] == "ann":
            store.set_search_params(ef_search=ef, refine_margin=margin)
        elif args["kind"] == "pgvector":
            store.ef_search, store.refine_margin = ef, margin
        out["live_enrollment"] = enroll_with_searches(store, extra, model_id, args["live_batches"], 10)
    out.update({k + "_after": v for k, v in rss_mb().items()})
    store.close()
    return out


def run_worker(args: dict, timeout: float) -> dict:
    proc = subprocess.run(  # noqa: PLW1510 - the return code is checked below
        [sys.executable, "-m", "benchmarks.gallery_scale", "--worker", json.dumps(args)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args['kind']} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- filling the stores --------------------------------------------------------------------
def fill(store: Any, ds: Dataset, batch_people: int = 1000, limit_s: float | None = None) -> dict:
    """Enroll the whole dataset through ``add_faces_many`` (``batch_people`` people per call)."""
    from modules.storage import NewFace

    order = np.argsort(ds.person, kind="stable")
    person_sorted = ds.person[order]
    bounds = np.flatnonzero(np.r_[True, person_sorted[1:] != person_sorted[:-1], True])
    t0 = time.perf_counter()
    done = 0
    for b in range(0, len(bounds) - 1, batch_people):
        batch = {}
        for j in range(b, min(b + batch_people, len(bounds) - 1)):
            rows = order[bounds[j] : bounds[j + 1]]
            batch[ds.names[int(person_sorted[bounds[j]])]] = [NewFace(ds.emb[r], ds.model_id) for r in rows]
            done += len(rows)
        store.add_faces_many(GALLERY, batch)
    seconds = time.perf_counter() - t0
    return {"faces": int(done), "seconds": round(seconds, 1), "faces_per_s": round(done / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="faces in the gallery")
    ap.add_argument("--backends", default="numpy,ann,pgvector")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--threshold", type=int, default=20_000, help="ann_threshold of both backends")
    ap.add_argument("--m", type=int, default=16, help="HNSW links per node (hnswlib)")
    ap.add_argument("--ef-construction", type=int, default=100, help="hnswlib build beam")
    ap.add_argument("--ef", default="128,64,256,512", help="hnswlib ef_search values to measure (first: default)")
    ap.add_argument("--pg-ef", default="100,40,200,400", help="pgvector hnsw.ef_search values to measure")
    ap.add_argument("--refine-margin", type=float, default=0.1, help="near-tie re-search margin (0: off)")
    ap.add_argument("--refine-ef", type=int, default=0, help="hnswlib beam of the re-search (0: by size)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the SQLite database and saved index already in --workdir (same --n and --seed)")
    ap.add_argument("--pg-m", type=int, default=16)
    ap.add_argument("--pg-ef-construction", type=int, default=64)
    ap.add_argument("--pg-url", help="an existing PostgreSQL with pgvector (default: a throwaway pgserver one)")
    ap.add_argument("--pg-maintenance-work-mem", default="3GB")
    ap.add_argument("--live-batches", type=int, default=100, help="small enrollments with a search after each")
    ap.add_argument("--workdir", help="keep the databases here (default: a temp dir, deleted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0

    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    unknown = set(backends) - {"numpy", "ann", "pgvector"}
    if unknown:
        ap.error(f"unknown backends: {sorted(unknown)}")
    tmp = tempfile.TemporaryDirectory(prefix="gallery-scale-") if not a.workdir else None
    work = Path(a.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    log(f"making the dataset: {a.n} faces, {a.queries} queries")
    t = time.perf_counter()
    ds = make_dataset(a.n, a.queries, a.seed)
    log(f"  {len(ds.names)} people in {time.perf_counter() - t:.1f}s; exact ground truth...")
    truth = exact_top1(ds)
    truth_names = np.array([ds.names[i] for i in truth], dtype=object)
    np.save(work / "queries.npy", ds.queries)
    np.save(work / "extra.npy", ds.extra)
    kinds = np.array(ds.query_kind)
    real_known = kinds == "real_known"
    ident_acc = float(np.mean([t == q for t, q, k in zip(truth_names, ds.query_truth, kinds) if k == "real_known"]))
    result: dict[str, Any] = {
        "n_faces": int(len(ds.emb)),
        "n_people": len(ds.names),
        "dim": int(ds.emb.shape[1]),
        "queries": {k: int((kinds == k).sum()) for k in ("real_known", "real_unknown", "synthetic")},
        "top_k": a.top_k,
        "embedder": ds.model_id,
        "synthetic_check": ds.check,
        "exact_rank1_real_known": round(ident_acc, 4) if real_known.any() else None,
        "cpu_count": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],
        "backends": {},
    }

    def recall(tops_file: Path) -> list[float]:
        tops = np.load(tops_file, allow_pickle=True)
        return [round(float(np.mean(np.array(t, dtype=object) == truth_names)), 4) for t in tops]

    common = {"queries": str(work / "queries.npy"), "extra": str(work / "extra.npy"), "model_id": ds.model_id,
              "top_k": a.top_k, "threshold": a.threshold, "m": a.m, "ef_construction": a.ef_construction,
              "live_batches": a.live_batches, "refine_ef": a.refine_ef}
    db = work / "gallery.db"
    if {"numpy", "ann"} & set(backends) and not (a.reuse and db.exists()):
        from modules.storage import open_gallery

        for p in work.glob("gallery.db*"):
            if p.is_file():
                p.unlink()
        log("filling SQLite through add_faces_many...")
        store = open_gallery(db, ann_threshold=None)
        result["sqlite_bulk_enroll"] = fill(store, ds)
        store.close()
        result["sqlite_file_mb"] = round(db.stat().st_size / 2**20, 1)
        log(f"  {result['sqlite_bulk_enroll']}")
    if "numpy" in backends:
        log("numpy (exact) worker...")
        r = run_worker({**common, "kind": "numpy", "db": str(db), "sweep": [["exact", 0, 0.0]],
                        "tops": str(work / "tops-numpy.npy"),
                        "live_batches": min(a.live_batches, 5)}, timeout=3600)
        r["recall_at_1"] = dict(zip(r["latency"], recall(work / "tops-numpy.npy")))
        result["backends"]["numpy"] = r
        log(f"  {r}")
    def sweep(efs: str, margin: float, refine_ef: int) -> list[list]:
        """Each ef with the near-tie refinement (the default), then the first ef without it."""
        values = [int(x) for x in efs.split(",")]
        wide = refine_ef or "auto"
        out = [[f"ef{v}+refine{wide}" if margin > 0 else f"ef{v}", v, margin] for v in values]
        if margin > 0:
            out.append([f"ef{values[0]}", values[0], 0.0])
        return out

    if "ann" in backends:
        ann_sweep = sweep(a.ef, a.refine_margin, a.refine_ef)
        import shutil

        cold = None
        if a.reuse and (work / "gallery.db.ann" / "g1.json").exists():
            log("reusing the saved index (--reuse): no cold start measured")
        else:
            shutil.rmtree(work / "gallery.db.ann", ignore_errors=True)
            log("ann worker, cold (builds the index from the database and saves it)...")
            cold = run_worker({**common, "kind": "ann", "db": str(db), "sweep": ann_sweep[:1],
                               "tops": str(work / "tops-ann0.npy"), "live_batches": 0}, timeout=7200)
            log(f"  {cold}")
        log("ann worker, warm (loads the saved index)...")
        r = run_worker({**common, "kind": "ann", "db": str(db), "sweep": ann_sweep, "tops": str(work / "tops-ann.npy"),
                        "extra_offset": 500}, timeout=3600)
        r["recall_at_1"] = dict(zip(r["latency"], recall(work / "tops-ann.npy")))
        if cold is not None:
            r["cold_start"] = {k: cold[k] for k in ("startup_s", "rss_mb", "peak_rss_mb", "index_built")}
        result["backends"]["ann"] = r
        log(f"  {r}")
    if "pgvector" in backends:
        result["backends"]["pgvector"] = bench_pgvector(
            a, ds, common, work, recall, log, sweep(a.pg_ef, a.refine_margin, 1000)
        )
    result["load_avg_end"] = os.getloadavg()[0]
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(result))
    return 0


def bench_pgvector(
    a: argparse.Namespace, ds: Dataset, common: dict, work: Path, recall: Any, log: Any, pg_sweep: list
) -> dict:
    from modules.errors import GalleryNotFoundError
    from modules.storage.pg_search import PostgresGallery
    from tests.pg_fixtures import start_throwaway_postgres

    server = None
    url = a.pg_url
    out: dict[str, Any] = {}
    try:
        if url is None:
            log("starting a throwaway PostgreSQL (pgserver)...")
            server = start_throwaway_postgres(
                {"shared_buffers": "2GB", "maintenance_work_mem": a.pg_maintenance_work_mem,
                 "max_parallel_maintenance_workers": "1", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
                 "effective_cache_size": "8GB", "work_mem": "64MB"}
            )
            server.sql("postgres", "CREATE DATABASE bench")
            url = server.url("bench")
            out["server"] = "throwaway pgserver: PostgreSQL 16.2 + pgvector 0.6.2, shared_buffers=2GB, fsync on"
        else:
            out["server"] = "given by --pg-url"
        store = PostgresGallery(url, ann_threshold=a.threshold, ann_autobuild="off", hnsw_m=a.pg_m,
                                hnsw_ef_construction=a.pg_ef_construction,
                                maintenance_work_mem=a.pg_maintenance_work_mem, build_workers=1)
        try:  # a re-run on --pg-url starts from an empty gallery
            store.delete_gallery(GALLERY)
        except GalleryNotFoundError:
            pass
        log("filling PostgreSQL through add_faces_many (COPY, no index yet)...")
        out["bulk_enroll"] = fill(store, ds)
        log(f"  {out['bulk_enroll']}")
        log("building the HNSW index (CREATE INDEX)...")
        t = time.perf_counter()
        built = store.ensure_ann_index(GALLERY, concurrently=False)
        out["index_build_s"] = round(time.perf_counter() - t, 1)
        out["index_build"] = built
        log(f"  {built}")
        info = store.search_index_info(GALLERY)
        out["index_mb"] = round(info.get("index_bytes", 0) / 2**20, 1)
        store.close()
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE faces")
            out["table_mb"] = round(conn.execute("SELECT pg_table_size('faces')").fetchone()[0] / 2**20, 1)
        log("pgvector worker...")
        r = run_worker({**common, "kind": "pgvector", "url": url, "sweep": pg_sweep, "tops": str(work / "tops-pg.npy"),
                        "extra_offset": 1500}, timeout=3600)
        r["recall_at_1"] = dict(zip(r["latency"], recall(work / "tops-pg.npy")))
        out.update(r)
        if server is not None:
            pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
            out["server_pss_mb"] = pss_of_server(pid)
        log(f"  {out}")
    finally:
        if server is not None:
            server.stop()
    return out


if __name__ == "__main__":
    sys.exit(main())
