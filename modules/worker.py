"""A video worker: runs the tasks of video jobs queued on Redis by the API servers.

    python -m modules.worker --queue-url redis://host:6379/0 [--data-dir ./data] [--database-url postgresql://...]
                             [--storage-dir /mnt/facerec/jobs] [--config configs/sface.yaml] [--burst]

Start any number, on any machines that reach the Redis server, the job database
and the storage folder (configured once: the same ``--database-url`` and a
shared ``--storage-dir`` as the API servers).  Each worker is one process that
loads the models once and runs one task at a time (start one per core or two);
it is an RQ ``SimpleWorker`` (:class:`modules.video.queue.VideoWorker`).

* the job database: ``--database-url`` (or ``DATABASE_URL``) when it is
  PostgreSQL, else ``<data-dir>/jobs.db`` (workers on the API's machine);
* the gallery: ``--database-url`` / ``DATABASE_URL``, else ``<data-dir>/gallery.db``;
* ``--queue-url`` falls back to ``QUEUE_URL`` (and ``FACEREC_QUEUE_URL``).

A worker killed mid-task (SIGKILL, power loss) stops renewing its task's
heartbeat; after ``--heartbeat-ttl`` seconds the task is given to another worker
(``Retry``, as many times as the API allowed) or, with no retries left, the job
fails.  SIGTERM / Ctrl-C finishes the current task first (a second one stops at once).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from .errors import ConfigError, FaceRecError

log = logging.getLogger("facerec.worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .video.queue import DEFAULT_CLEANUP_INTERVAL, DEFAULT_HEARTBEAT_TTL, QUEUE_NAME

    ap = argparse.ArgumentParser(prog="python -m modules.worker", description="Run video job tasks from a Redis queue.")
    ap.add_argument("--queue-url", default=None, help="redis://host:port/db (default: $QUEUE_URL)")
    ap.add_argument("--data-dir", default="./data", help="default home of jobs.db, gallery.db and jobs/ (./data)")
    ap.add_argument("--database-url", default=None, help="gallery and job database (default: $DATABASE_URL)")
    ap.add_argument("--storage-dir", default=None, help="video files, shared with the API (default <data-dir>/jobs)")
    ap.add_argument("--config", default=None, help="embedder config preloaded (default configs/sface.yaml)")
    ap.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    ap.add_argument("--name", default=None, help="worker name (default host.pid)")
    ap.add_argument("--queue-name", default=os.environ.get("FACEREC_QUEUE_NAME", QUEUE_NAME))
    ap.add_argument("--heartbeat-ttl", type=int, default=DEFAULT_HEARTBEAT_TTL,
                    help=f"seconds without a heartbeat before a task is given up (default {DEFAULT_HEARTBEAT_TTL})")
    ap.add_argument("--cleanup-interval", type=float, default=DEFAULT_CLEANUP_INTERVAL,
                    help=f"seconds between checks for abandoned tasks (default {DEFAULT_CLEANUP_INTERVAL})")
    ap.add_argument("--threads", type=int, default=None,
                    help="OpenCV threads of this worker (default: all cores; 1 when running one worker per core)")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def queue_url_from_env(value: str | None = None, environ: Any = None) -> str | None:
    """``value``, else ``$QUEUE_URL``, else ``$FACEREC_QUEUE_URL``; None (in-process) when all are empty."""
    env = os.environ if environ is None else environ
    for v in (value, env.get("QUEUE_URL"), env.get("FACEREC_QUEUE_URL")):
        if v is not None and str(v).strip():
            return str(v).strip()
    return None


class _Models:
    """One recognizer per embedder config, loaded on first use and kept (one gallery connection)."""

    def __init__(self, gallery: Any, preload: str | None):
        self.gallery = gallery
        self._by_config: dict[str | None, Any] = {}
        self._lock = threading.Lock()
        self.default = self.get(preload)
        self._by_config[None] = self.default

    def get(self, name: str | None) -> Any:
        with self._lock:
            rec = self._by_config.get(name)
            if rec is None:
                from .recognizer import FaceRecognizer

                rec = self._by_config[name] = FaceRecognizer(name, self.gallery)
            return rec


def build_worker(args: argparse.Namespace) -> Any:
    from .storage import open_gallery, resolve_database_url
    from .video.queue import RedisQueueExecutor, TaskContext, make_worker_class, set_worker_context, worker_name
    from .video.store import job_store_location, open_job_store

    url = queue_url_from_env(args.queue_url)
    if not url:
        raise ConfigError("no queue: pass --queue-url redis://host:port/db or set QUEUE_URL")
    data_dir = Path(args.data_dir).expanduser()
    database_url = resolve_database_url(args.database_url)
    storage = Path(args.storage_dir).expanduser() if args.storage_dir else data_dir / "jobs"
    storage.mkdir(parents=True, exist_ok=True)
    store = open_job_store(job_store_location(data_dir, database_url))
    gallery = open_gallery(database_url or (data_dir / "gallery.db"))
    models = _Models(gallery, args.config)
    executor = RedisQueueExecutor(url, queue_name=args.queue_name, cleanup_interval=args.cleanup_interval)
    name = args.name or worker_name()
    ctx = TaskContext(store=store, storage_dir=storage, recognizer_for=models.get, executor=executor, worker=name)
    executor.ctx = ctx
    cls = make_worker_class()
    cls.heartbeat_ttl = max(2, int(args.heartbeat_ttl))
    cls.cleanup_interval = float(args.cleanup_interval)
    worker = cls(
        [executor.queue],
        connection=executor.redis,
        name=f"{name}.{os.urandom(2).hex()}",
        maintenance_interval=max(1, int(args.cleanup_interval)),
    )
    set_worker_context(ctx, worker)
    log.info(
        "video worker %s: queue %s on %s, jobs in %r, gallery %r, files in %s",
        name, executor.queue.name, executor, store, gallery, storage,
    )
    return worker, executor, store, gallery


def _maintenance_loop(executor: Any, stop: threading.Event) -> None:
    """Registry cleanup while the main thread is busy with a long task (the worker loop only cleans between tasks)."""
    from .video.queue import clean_queue

    while not stop.wait(executor.cleanup_interval):
        try:
            clean_queue(executor.queue, executor.cleanup_interval)
        except Exception as exc:  # noqa: BLE001 - Redis away for a moment
            log.warning("queue cleanup: %s", exc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import cv2

        cv2.setNumThreads(max(1, args.threads))
    try:
        worker, executor, store, gallery = build_worker(args)
    except FaceRecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    stop = threading.Event()
    threading.Thread(target=_maintenance_loop, args=(executor, stop), name="queue-cleanup", daemon=True).start()
    print(f"worker {worker.name} ready on queue {executor.queue.name}", flush=True)
    try:
        worker.work(burst=args.burst, logging_level=args.log_level.upper())
    finally:
        stop.set()
        store.close()
        gallery.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
