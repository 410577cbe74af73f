"""Video jobs on 1, 2, 4 ... RQ workers: one long 1080p video (whole and in chunks) and a batch of videos.

    python -m benchmarks.video_scale --workers 1,2,4 [--seconds 60] [--batch 4] [--batch-seconds 15]
                                     [--chunk-seconds 10] [--threads 0] [--queue-url redis://...]

The videos are made from the labelled hamilton clip (640x360, 275 frames),
upscaled to 1920x1080 and looped: one of ``--seconds`` and one of
``--batch-seconds`` (queued ``--batch`` times), written to a temporary folder
(never into the repository) and removed at the end.  The clip's three people
are enrolled, so the runs recognise as a real deployment would.

Everything runs as in production on one machine: a Redis server (a throwaway
``redis-server`` unless ``--queue-url``), ``python -m modules.worker``
processes (started and warmed up before the clock starts; each gets
``--threads`` OpenCV threads, by default the cores divided by the workers),
a :class:`~modules.jobs.manager.JobManager` with a
:class:`~modules.jobs.executors.RedisQueueExecutor` over an SQLite job store in a
temporary data folder.  Wall time is from the first job queued to
the last job done (uploads are not timed).  For each worker count:

* ``one_video_whole``: the long video as one task (what a single worker does;
  more workers cannot help it);
* ``one_video_chunked``: the long video split into ``--chunk-seconds`` chunks
  (analysed in parallel, tracks joined, rendered in parallel, concatenated);
* ``batch``: ``--batch`` videos, one task each.

Besides wall time, each run reports the CPU seconds its workers used (from
``/proc``) and the load average before and after: on a machine shared with
other work, or with fewer cores than workers, wall times say more about the
machine than about the code, and CPU seconds per frame stay comparable.  The
last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2

ROOT = Path(__file__).resolve().parents[1]
CLIP_DIR = ROOT.parent / "shared" / "data" / "face_recognition_examples" / "video_short_hamilton_clip"


def make_video(src: Path, dest: Path, seconds: float, size: tuple[int, int] = (1920, 1080)) -> dict[str, Any]:
    """``src`` upscaled to ``size`` and looped (forwards, then backwards: no jump cut) for ``seconds``."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(f, size, interpolation=cv2.INTER_LINEAR))
    cap.release()
    loop = frames + frames[-2:0:-1]
    n = int(round(seconds * fps))
    w = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(n):
        w.write(loop[i % len(loop)])
    w.release()
    return {"path": str(dest), "frames": n, "fps": round(fps, 3), "width": size[0], "height": size[1],
            "seconds": round(n / fps, 2), "bytes": dest.stat().st_size}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.video import load_labels
    from modules.jobs import ChunkPolicy, JobLimits, JobManager
    from modules.jobs.executors import RedisQueueExecutor
    from modules.storage import open_gallery
    from modules.recognizer import FaceRecognizer
    from modules.storage.jobs import open_job_store
    from tests.redis_fixtures import WorkerProcess, start_throwaway_redis, wait_for_workers

    tmp = Path(tempfile.mkdtemp(prefix="facerec-video-scale-"))
    redis = None
    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "runs": []}
    try:
        labels = load_labels(CLIP_DIR)
        src = CLIP_DIR / labels["video"]
        t0 = time.perf_counter()
        long_video = make_video(src, tmp / "long_1080p.mp4", args.seconds)
        short_video = make_video(src, tmp / "short_1080p.mp4", args.batch_seconds)
        out["videos"] = {"long": long_video, "batch_item": short_video, "batch": args.batch,
                         "made_in_s": round(time.perf_counter() - t0, 1)}
        if args.queue_url:
            url = args.queue_url
        else:
            redis = start_throwaway_redis()
            url = redis.url + "/0"
        data = tmp / "data"
        data.mkdir()
        gallery = open_gallery(data / "gallery.db")
        rec = FaceRecognizer(args.config, gallery)
        for person, rels in labels["enroll"].items():
            rec.enroll("default", person, [CLIP_DIR / r for r in rels])
        store = open_job_store(data / "jobs.db")

        def manager(chunk_seconds: float) -> JobManager:
            return JobManager(data / "jobs", rec, store=store, own_store=False,
                              limits=JobLimits(max_frames=10**7, max_duration_s=10**6),
                              executor=RedisQueueExecutor(url, cleanup_interval=5),
                              chunking=ChunkPolicy(chunk_seconds=chunk_seconds, min_seconds=0, overlap_seconds=1.0))

        def cpu_seconds(pids: list[int]) -> float:
            tick = os.sysconf("SC_CLK_TCK")
            total = 0.0
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / tick
                except (OSError, IndexError, ValueError):
                    pass
            return total

        pids: list[int] = []

        def timed(m: JobManager, paths: list[str]) -> dict[str, Any]:
            load0 = os.getloadavg()[0]
            cpu0 = cpu_seconds(pids)
            start = time.perf_counter()
            ids = [m.submit(p, Path(p).name)["job_id"] for p in paths]
            states = [m.wait(j, timeout=args.timeout) for j in ids]
            wall = time.perf_counter() - start
            bad = [s for s in states if s["status"] != "done"]
            if bad:
                raise RuntimeError(f"jobs did not finish: {bad}")
            frames = sum(s["frames_done"] for s in states)
            cpu = cpu_seconds(pids) - cpu0
            return {"wall_s": round(wall, 2), "frames": frames, "fps": round(frames / wall, 2),
                    "worker_cpu_s": round(cpu, 1), "cpu_ms_per_frame": round(1000 * cpu / max(frames, 1), 1),
                    "load_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
                    "chunks": sum(int(s.get("chunks") or 1) for s in states),
                    "workers_used": len({w for s in states for w in s.get("workers") or []})}

        whole, chunked = manager(0), manager(args.chunk_seconds)
        for n in args.workers:
            threads = args.threads or max(1, (os.cpu_count() or 1) // n)
            ws = [WorkerProcess(url, tmp, "--data-dir", str(data), "--threads", str(threads)) for _ in range(n)]
            pids[:] = [w.pid for w in ws]
            try:
                for w in ws:
                    w.wait_ready(120)
                wait_for_workers(url, n)
                timed(whole, [short_video["path"]])  # warm-up: first decode, first model run, page cache
                row: dict[str, Any] = {"workers": n, "threads_per_worker": threads}
                row["one_video_whole"] = timed(whole, [long_video["path"]]) if (n == 1 or args.whole_all) else None
                row["one_video_chunked"] = timed(chunked, [long_video["path"]])
                row["batch"] = timed(whole, [short_video["path"]] * args.batch)
                out["runs"].append(row)
                print(json.dumps(row), flush=True)
            finally:
                for w in ws:
                    w.stop()
        whole.shutdown()
        chunked.shutdown()
        store.close()
        gallery.close()
        base = out["runs"][0]
        one = base["one_video_whole"]["wall_s"]
        out["speedup"] = {
            str(r["workers"]): {
                "one_video_chunked_vs_whole_1_worker": round(one / r["one_video_chunked"]["wall_s"], 2),
                "batch_vs_1_worker": round(base["batch"]["wall_s"] / r["batch"]["wall_s"], 2),
            }
            for r in out["runs"]
        }
        out["settings"] = {"chunk_seconds": args.chunk_seconds, "overlap_seconds": 1.0,
                           "config": args.config or "configs/sface.yaml"}
        try:
            import av  # noqa: F401

            out["settings"]["concat"] = "pyav"
        except ImportError:
            out["settings"]["concat"] = "opencv (PyAV not installed)"
        return out
    finally:
        if redis is not None:
            redis.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated (default 1,2,4)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the long 1080p video (default 60)")
    ap.add_argument("--batch", type=int, default=4, help="videos in the batch (default 4)")
    ap.add_argument("--batch-seconds", type=float, default=15.0, help="length of each batch video (default 15)")
    ap.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length for the chunked run (default 10)")
    ap.add_argument("--threads", type=int, default=0, help="OpenCV threads per worker (0: cores / workers)")
    ap.add_argument("--whole-all", action="store_true", help="also time the unchunked video with >1 workers")
    ap.add_argument("--config", default=None, help="embedder config (default configs/sface.yaml)")
    ap.add_argument("--queue-url", default=None, help="an existing Redis (default: a throwaway redis-server)")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
    if not args.workers or min(args.workers) < 1:
        ap.error("--workers needs positive counts")
    out = run(args)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
