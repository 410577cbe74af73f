"""Who runs the tasks of video jobs: a pool of threads in this process, or RQ workers on Redis (docs/queue.md).

Both take a job's whole plan (:func:`modules.jobs.tasks.plan`) at once and start a stage when every task of the
one before has ended.  An RQ worker renews its task's ``StartedJobRegistry`` entry every ``heartbeat_ttl / 3`` s;
once a killed worker's entry expires, the next registry cleanup retries the task or fails the job.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from typing import Any

import redis
from rq import Callback, Queue, Retry, Worker, get_current_job
from rq.exceptions import AbandonedJobError, InvalidJobOperation
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import now
from rq.worker import SimpleWorker
from rq.worker_registration import clean_worker_registry

from ..errors import ConfigError, FaceRecError, ServiceUnavailableError
from ..settings import QueueSettings
from ..storage.engine import safe_url
from ..storage.jobs import ACTIVE
from .tasks import TaskContext, execute, fail_job, worker_name

log = logging.getLogger("facerec.jobs.executors")

_DEFAULTS = QueueSettings.model_fields  # one place for the defaults: the settings tree
QUEUE_NAME: str = _DEFAULTS["name"].default
DEFAULT_HEARTBEAT_TTL: int = _DEFAULTS["heartbeat_ttl"].default
DEFAULT_CLEANUP_INTERVAL: float = _DEFAULTS["cleanup_interval"].default
LIVE_RQ_STATES = ("queued", "started", "deferred", "scheduled")
KINDS = ("analyze", "join", "render", "finish")
Plan = list[list[tuple[str, int]]]


class InProcessExecutor:
    """Tasks on ``workers`` daemon threads in this process; ``workers=0``: at once, in the calling thread.

    Daemon threads do not hold the process open at exit (a ``ThreadPoolExecutor`` would wait for
    a long video): a job cut off that way stays ``running`` in the store and is marked failed by
    the next start (or by another server once its heartbeat is stale).
    """

    kind = "inprocess"

    def __init__(self, workers: int = 1):
        self.workers = max(0, int(workers))
        self.parallelism = max(1, self.workers)
        self.ctx: TaskContext | None = None
        self._q: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._work, name=f"video-job-{i}", daemon=True)
                         for i in range(self.workers)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while (task := self._q.get()) is not None:
            task()

    def start(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def submit(self, job_id: str, plan: Plan, stage: int = 0) -> None:
        """The tasks of ``plan[stage]``; the last of them to end submits the next stage."""
        if stage >= len(plan):
            return
        left = [len(plan[stage])]
        lock = threading.Lock()

        def run(kind: str, idx: int) -> None:
            self._run(job_id, kind, idx)
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self.submit(job_id, plan, stage + 1)

        for kind, idx in plan[stage]:
            if self._threads:
                self._q.put(functools.partial(run, kind, idx))
            else:
                run(kind, idx)

    def _run(self, job_id: str, kind: str, idx: int) -> None:
        assert self.ctx is not None
        try:
            execute(self.ctx, job_id, kind, idx)
        except Exception as exc:  # a bug or the database gone: keep the server alive, say little
            log.exception("video job %s task %s/%d crashed", job_id, kind, idx)
            with contextlib.suppress(Exception):
                fail_job(self.ctx.store, job_id, f"internal error ({type(exc).__name__})")

    def cancel(self, job_id: str, chunks: int) -> None:
        pass  # queued tasks see the job ended and return at once

    def maintenance(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"executor": self.kind, "workers": self.workers}

    def shutdown(self, wait: bool = True) -> None:
        if not wait:  # drop what has not started
            with contextlib.suppress(queue.Empty):
                while True:
                    self._q.get_nowait()
        for _ in self._threads:
            self._q.put(None)
        if wait:
            for t in self._threads:
                t.join()


# --- RQ ----------------------------------------------------------------------------------------------------------
def redis_connection(url: str) -> redis.Redis:
    if not url.lower().startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"the queue URL must be redis://host:port/db (or rediss://, unix://), got {url!r}")
    return redis.Redis.from_url(url, health_check_interval=30, socket_connect_timeout=10)


def rq_job_id(job_id: str, kind: str, idx: int) -> str:
    return f"video-{job_id}-{kind}-{idx}"


def _tasks(connection: Any, job_id: str, chunks: int) -> list[Job]:
    ids = [rq_job_id(job_id, kind, i) for kind in KINDS for i in range(chunks if kind in ("analyze", "render") else 1)]
    return [j for j in Job.fetch_many(ids, connection=connection) if j is not None]


def cancel_tasks(connection: Any, job_id: str, chunks: int) -> None:
    """Drop the job's tasks that have not started (those running stop at their next progress tick)."""
    with contextlib.suppress(redis.exceptions.RedisError):
        for j in _tasks(connection, job_id, chunks):
            if j.get_status(refresh=False) in ("queued", "deferred", "scheduled"):
                with contextlib.suppress(InvalidJobOperation, redis.exceptions.RedisError):
                    j.cancel()


class RedisQueueExecutor:
    """Tasks as RQ jobs on Redis, run by ``python -m modules.worker`` processes anywhere."""

    kind = "queue"
    parallelism = 1 << 20  # unknown: workers come and go; plan chunks by length alone

    def __init__(self, url: str, queue: QueueSettings | None = None, *, lost_after: float = 300.0, **overrides: Any):
        """``queue``: the settings (default: their defaults, not the environment's); ``overrides``: some of them."""
        q = (queue or QueueSettings.model_construct()).model_copy(update=overrides)
        self.url = url
        self.redis = redis_connection(url)
        self.queue = Queue(q.name, connection=self.redis)
        self.retries = max(0, int(q.retries))
        self.task_timeout = max(1, int(q.task_timeout))
        self.cleanup_interval = float(q.cleanup_interval)
        self.lost_after = float(lost_after)
        self.ctx: TaskContext | None = None

    def __repr__(self) -> str:
        return f"RedisQueueExecutor({safe_url(self.url)!r}, queue={self.queue.name!r})"

    def start(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        register_context(ctx)

    def submit(self, job_id: str, plan: Plan) -> None:
        """Every task of the plan at once; each stage waits for the one before (``depends_on``)."""
        meta = {"video_job": job_id, "store": self.ctx.store.store_id if self.ctx else None}
        before: list[Any] | None = None
        try:
            for stage in plan:
                before = [
                    self.queue.enqueue(
                        rq_task, job_id, kind, idx, job_id=rq_job_id(job_id, kind, idx), depends_on=before,
                        description=f"video job {job_id}: {kind} {idx}", job_timeout=self.task_timeout,
                        retry=Retry(max=self.retries) if self.retries else None, result_ttl=24 * 3600,
                        failure_ttl=7 * 24 * 3600, on_failure=Callback(on_task_failure), meta=meta,
                    )
                    for kind, idx in stage
                ]
        except redis.exceptions.RedisError as exc:
            raise ServiceUnavailableError(f"the task queue is not reachable: {exc}") from exc

    def cancel(self, job_id: str, chunks: int) -> None:
        cancel_tasks(self.redis, job_id, chunks)

    def live_tasks(self, job_id: str, chunks: int) -> int:
        return sum(j.get_status(refresh=False) in LIVE_RQ_STATES for j in _tasks(self.redis, job_id, chunks))

    def maintenance(self) -> None:
        """Registry cleanup (abandoned tasks -> retry or failure), then jobs whose tasks are all gone -> failed."""
        try:
            clean_queue(self.queue, self.cleanup_interval)
            if self.ctx is None:
                return
            now = time.time()
            for job in self.ctx.store.active():
                if job.get("executor") != self.kind:
                    continue
                if now - float(job.get("heartbeat") or 0) < self.lost_after:
                    continue
                if self.live_tasks(job["job_id"], int(job.get("chunks") or 1)) == 0:
                    fail_job(self.ctx.store, job["job_id"],
                             "lost: no worker runs or waits for any of its tasks (was the queue emptied,"
                             " or do the workers use another job database?)")
        except (redis.exceptions.RedisError, FaceRecError) as exc:
            log.warning("video queue maintenance: %s", exc)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"executor": self.kind, "queue": self.queue.name}
        with contextlib.suppress(Exception):
            info["workers"] = Worker.count(queue=self.queue)
            info["queued_tasks"] = self.queue.count
        return info

    def shutdown(self, wait: bool = True) -> None:
        if self.ctx is not None:
            unregister_context(self.ctx)
        with contextlib.suppress(Exception):
            self.redis.close()


def clean_queue(queue: Any, interval: float) -> bool:
    """RQ's registry cleanup for ``queue``, at most once per ``interval`` across every process.

    Expired entries of the ``StartedJobRegistry`` are tasks whose worker stopped sending
    heartbeats: RQ runs their failure callback and retries them (``Retry``) or fails them.
    A lock with an expiry (never released) keeps two processes from handling one task twice.
    """
    key = f"facerec:video:cleanup:{queue.name}"
    if not queue.connection.set(key, worker_name(), nx=True, ex=max(1, int(round(interval)))):
        return False
    # the timer death penalty works off the main thread (callbacks run under it)
    StartedJobRegistry(queue=queue, death_penalty_class=TimerDeathPenalty).cleanup()
    FinishedJobRegistry(queue=queue).cleanup()
    FailedJobRegistry(queue=queue).cleanup()
    return True


# --- what RQ calls ------------------------------------------------------------------------------------------------
_CONTEXTS: dict[str, TaskContext] = {}  # by store id: the failure callback finds a job's store
_CONTEXTS_LOCK = threading.Lock()
_WORKER: VideoWorker | None = None  # the worker of this process
_WORKER_CONTEXT: TaskContext | None = None


def register_context(ctx: TaskContext) -> None:
    with _CONTEXTS_LOCK:
        _CONTEXTS[ctx.store.store_id] = ctx


def unregister_context(ctx: TaskContext) -> None:
    with _CONTEXTS_LOCK:
        if _CONTEXTS.get(ctx.store.store_id) is ctx:
            del _CONTEXTS[ctx.store.store_id]


def context_for(store_id: str | None) -> TaskContext | None:
    with _CONTEXTS_LOCK:
        if store_id in _CONTEXTS:
            return _CONTEXTS[store_id]
        if len(_CONTEXTS) == 1:  # one store here, spelled differently by whoever queued the task
            return next(iter(_CONTEXTS.values()))
    return None


def set_worker_context(ctx: TaskContext, worker: Any = None) -> None:
    global _WORKER_CONTEXT, _WORKER
    _WORKER_CONTEXT, _WORKER = ctx, worker
    register_context(ctx)


@contextlib.contextmanager
def _heartbeats(interval: float) -> Any:
    """Renew this task's entry in the StartedJobRegistry while it runs (stops before the task returns)."""
    job, worker = get_current_job(), _WORKER
    if job is None or worker is None:
        yield
        return
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval):
            try:
                worker.maintain_heartbeats(job)
            except Exception as exc:  # noqa: BLE001 - Redis away for a moment: try again next time
                log.warning("heartbeat of %s failed: %s", job.id, exc)

    t = threading.Thread(target=beat, name="rq-heartbeat", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def rq_task(job_id: str, kind: str, idx: int) -> None:
    """The RQ job function: one task of a video job, in the worker's context."""
    ctx = _WORKER_CONTEXT
    if ctx is None:
        raise RuntimeError("video tasks run in `python -m modules.worker` processes (no worker context here)")
    with _heartbeats(max(0.5, getattr(_WORKER, "heartbeat_ttl", DEFAULT_HEARTBEAT_TTL) / 3.0)):
        execute(ctx, job_id, kind, idx)


def on_task_failure(job: Any, connection: Any, typ: Any, value: Any, tb: Any) -> None:
    """RQ failure callback: a task raised, timed out, or its worker died.  Fails the video job (and drops
    its waiting tasks) once RQ has no retry left for the task (never raises: RQ would stop its cleanup)."""
    try:
        video_job = (job.meta or {}).get("video_job") or (job.args[0] if job.args else None)
        ctx = context_for((job.meta or {}).get("store"))
        if ctx is None or video_job is None:
            return
        if isinstance(typ, type) and issubclass(typ, AbandonedJobError):
            reason = "its worker stopped (no heartbeat)"
        elif isinstance(typ, type) and issubclass(typ, JobTimeoutException):
            reason = "a task ran past its time limit"
        else:
            reason = f"internal error ({getattr(typ, '__name__', typ)})"
        if job.retries_left and job.retries_left > 0:
            log.warning("video job %s: %s; retrying (%d retries left)", video_job, reason, job.retries_left)
            with ctx.store.tx() as tx:
                cur = tx.job(video_job, lock=True)
                if cur is not None and cur["status"] in ACTIVE:
                    tx.put_job({**cur, "retries": int(cur.get("retries") or 0) + 1, "last_error": reason})
            return
        state = fail_job(ctx.store, video_job, f"{reason}; no retries left")
        if state is not None:
            cancel_tasks(connection, video_job, int(state.get("chunks") or 1))
    except Exception:
        log.exception("video task failure callback")


class VideoWorker(SimpleWorker):
    """RQ's ``SimpleWorker`` (no fork: models stay loaded) with short task heartbeats."""

    heartbeat_ttl: int = DEFAULT_HEARTBEAT_TTL
    cleanup_interval: float = DEFAULT_CLEANUP_INTERVAL

    def get_heartbeat_ttl(self, job: Any) -> int:
        return int(self.heartbeat_ttl)

    def clean_registries(self) -> None:
        for q in self.queues:
            if clean_queue(q, self.cleanup_interval):
                clean_worker_registry(q)
        self.last_cleaned_at = now()
