"""A video worker: runs the tasks of video jobs queued on Redis by the API servers (docs/queue.md).

    python -m modules.worker --queue-url redis://host:6379/0 [--data-dir ./data] [--database-url postgresql://...]
                             [--storage-dir /mnt/facerec/jobs] [--config configs/sface.yaml] [--burst]

Start any number, on machines that reach Redis, the job database and the storage folder (the same
``--database-url`` and a shared ``--storage-dir`` as the API servers).  Each is one process, an RQ ``SimpleWorker``
that loads the models once and runs one task at a time.  SIGTERM / Ctrl-C finishes the current task first.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, FaceRecError
from ..files import private_dir, private_umask
from ..settings import Settings, load_settings

log = logging.getLogger("facerec.worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags left unset fall through to the settings tree (``FACEREC_*``, ``DATABASE_URL``, ``QUEUE_URL``)."""
    ap = argparse.ArgumentParser(prog="python -m modules.worker", description="Run video job tasks from a Redis queue.")
    ap.add_argument("--queue-url", default=None, help="redis://host:port/db (default: $QUEUE_URL)")
    ap.add_argument("--data-dir", default=None, help="default home of jobs.db, gallery.db and jobs/ (./data)")
    ap.add_argument("--database-url", default=None, help="gallery and job database (default: $DATABASE_URL)")
    ap.add_argument("--storage-dir", default=None, help="video files, shared with the API (default <data-dir>/jobs)")
    ap.add_argument("--config", default=None, help="embedder config preloaded (default configs/sface.yaml)")
    ap.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    ap.add_argument("--name", default=None, help="worker name (default host.pid)")
    ap.add_argument("--queue-name", default=None, help="RQ queue (default $FACEREC_QUEUE_NAME or facerec-video)")
    ap.add_argument("--heartbeat-ttl", type=int, default=None,
                    help="seconds without a heartbeat before a task is given up (default $FACEREC_QUEUE_HEARTBEAT_TTL or 30)")
    ap.add_argument("--cleanup-interval", type=float, default=None,
                    help="seconds between checks for abandoned tasks (default $FACEREC_QUEUE_CLEANUP_INTERVAL or 10)")
    ap.add_argument("--threads", type=int, default=None,
                    help="OpenCV threads of this worker (default: all cores; 1 when running one worker per core)")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def worker_settings(args: argparse.Namespace) -> Settings:
    """The settings tree with this worker's flags on top."""
    settings = load_settings(data_dir=args.data_dir, gallery_url=args.database_url, queue_url=args.queue_url,
                             storage_dir=args.storage_dir, config=args.config)
    queue = {"name": args.queue_name, "heartbeat_ttl": args.heartbeat_ttl, "cleanup_interval": args.cleanup_interval}
    return settings.replace(queue=settings.queue.model_copy(update={k: v for k, v in queue.items() if v is not None}))


def recognizers(gallery: Any, preload: str | None) -> Callable[[str | None], Any]:
    """One recognizer per embedder config (None: ``preload``, loaded now), others on first use; all kept."""
    from ..recognizer import FaceRecognizer

    load = functools.cache(lambda name: FaceRecognizer(name, gallery))  # a worker runs one task at a time
    load(preload)
    return lambda name: load(name or preload)


def build_worker(args: argparse.Namespace) -> Any:
    from ..storage import open_gallery
    from ..storage.jobs import open_job_store
    from .executors import RedisQueueExecutor, VideoWorker, set_worker_context
    from .tasks import TaskContext, worker_name

    settings = worker_settings(args)
    if not settings.queue_url:
        raise ConfigError("no queue: pass --queue-url redis://host:port/db or set QUEUE_URL")
    storage = private_dir(settings.jobs_dir)
    store = open_job_store(settings.jobs_database)
    gallery = open_gallery(settings.gallery_location)
    queue = settings.queue
    executor = RedisQueueExecutor(settings.queue_url, queue)
    name = args.name or worker_name()
    ctx = TaskContext(store=store, storage_dir=storage, recognizer_for=recognizers(gallery, settings.config),
                      worker=name)
    executor.ctx = ctx
    worker = VideoWorker(
        [executor.queue],
        connection=executor.redis,
        name=f"{name}.{os.urandom(2).hex()}",
        maintenance_interval=max(1, int(queue.cleanup_interval)),
    )
    worker.heartbeat_ttl = max(2, int(queue.heartbeat_ttl))
    worker.cleanup_interval = float(queue.cleanup_interval)
    set_worker_context(ctx, worker)
    log.info(
        "video worker %s: queue %s on %s, jobs in %r, gallery %r, files in %s",
        name, executor.queue.name, executor, store, gallery, storage,
    )
    return worker, executor, store, gallery


def _maintenance_loop(executor: Any, stop: threading.Event) -> None:
    """Registry cleanup while the main thread is busy with a long task (the worker loop only cleans between tasks)."""
    from .executors import clean_queue

    while not stop.wait(executor.cleanup_interval):
        try:
            clean_queue(executor.queue, executor.cleanup_interval)
        except Exception as exc:  # noqa: BLE001 - Redis away for a moment
            log.warning("queue cleanup: %s", exc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    private_umask()  # video uploads, annotated videos and crops: this user's only
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
