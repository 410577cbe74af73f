"""The tasks of a video job and the plan that orders them (stages: see docs/queue.md).

A task is a call ``execute(ctx, job_id, kind, idx)`` that reads and writes only the job store and the storage
folder.  Every write first checks, in the same transaction, that the job is still where the task thinks it is
(status, phase) and that the task's chunk attempt is still the current one (a fencing token): a task that was
given up on can never overwrite the work of the retry that replaced it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2

from ..errors import FaceRecError, ServiceUnavailableError
from ..files import private_dir, private_file, write_private
from ..video.config import VideoConfig
from ..video.process import process_video
from ..video.processor import FrameResult, Hooks
from ..video.ranges import analyze_range, concat_videos, render_range
from ..storage.jobs import ACTIVE, JobStore, Tx, now_iso
from .chunks import join_chunks, judge_decider

log = logging.getLogger("facerec.jobs")

LIVE_FILE = "live.jpg"
ANALYSIS_SHARE = 0.9  # of the progress bar, when a render pass follows


class Superseded(Exception):
    """This task's attempt is no longer the current one (or the job ended): stop without writing."""


def worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


@dataclass
class TaskContext:
    """What a task needs from the process it runs in."""

    store: JobStore
    storage_dir: Path
    recognizer_for: Callable[[str | None], Any]
    worker: str = field(default_factory=worker_name)
    progress_interval: float = 0.5
    live_interval: float = 0.2

    def job_dir(self, job_id: str) -> Path:
        return self.storage_dir / job_id


def video_config(job: dict[str, Any]) -> VideoConfig:
    cfg = VideoConfig.model_validate(job.get("video_config") or {})
    return cfg.model_copy(update={"save_unknown_crops": False})


def frame_limits(job: dict[str, Any]) -> dict[str, int | None]:
    """The limits a job's frames are decoded within (stored with the job when it was accepted)."""
    return {k: job.get(k) for k in ("max_frames", "max_pixels", "max_total_pixels")}


def plan(job: dict[str, Any]) -> list[list[tuple[str, int]]]:
    """The stages of ``job``'s tasks, ``[[(kind, idx), ...], ...]``."""
    n = int(job.get("chunks") or 1)
    if n == 1:
        return [[("analyze", 0)]]
    stages = [[("analyze", i) for i in range(n)], [("join", 0)]]
    if video_config(job).write_video:
        stages += [[("render", i) for i in range(n)], [("finish", 0)]]
    return stages


# --- job state helpers ------------------------------------------------------------------------------------
def _end(store: JobStore, job_id: str, **changes: Any) -> dict[str, Any] | None:
    with store.tx() as tx:
        job = tx.job(job_id, lock=True)
        if job is None or job["status"] not in ACTIVE:
            return job
        return tx.put_job({**job, **changes, "finished_at": now_iso()})


def fail_job(store: JobStore, job_id: str, error: str) -> dict[str, Any] | None:
    """Mark an active job failed (no-op once it has ended)."""
    log.warning("video job %s: %s", job_id, error)
    return _end(store, job_id, status="failed", error=error)


def cancel_job(store: JobStore, job_id: str) -> dict[str, Any] | None:
    return _end(store, job_id, status="cancelled", cancel=True)


def fenced(tx: Tx, job_id: str, idx: int, attempt: int, which: str = "attempt") -> tuple[dict, dict]:
    job = tx.job(job_id, lock=True)
    chunk = tx.chunk(job_id, idx, lock=True)
    if job is None or chunk is None or chunk[which] != attempt or job["status"] != "running":
        raise Superseded(f"video job {job_id} chunk {idx}: attempt {attempt} is no longer current")
    return job, chunk


def _progress(chunks: list[dict[str, Any]], total: int | None, render: bool) -> float:
    if not total or total <= 0:
        return 0.0
    analysed = sum(int(c["frames_done"] or 0) for c in chunks)
    if not render:
        return round(min(1.0, analysed / total), 4)
    rendered = sum(int(c["rendered"] or 0) for c in chunks)
    return round(min(1.0, ANALYSIS_SHARE * analysed / total + (1 - ANALYSIS_SHARE) * rendered / total), 4)


def _with_timing(summary: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    out = dict(summary)
    with contextlib.suppress(TypeError, ValueError):
        started = datetime.fromisoformat(str(job.get("started_at")).replace("Z", "+00:00"))
        seconds = (datetime.fromisoformat(now_iso().replace("Z", "+00:00")) - started).total_seconds()
        out["seconds"] = round(seconds, 3)
        out["fps"] = round(summary["frames"] / seconds, 2) if seconds > 0 else None
    return out


class _Ticker(Hooks):
    """Progress, heartbeat, cancellation and (one-chunk jobs) per-frame results every ``progress_interval`` s;
    the live frame (``live.jpg``, encoded once, for MJPEG viewers on any server) a few times a second."""

    def __init__(self, ctx: TaskContext, job: dict, idx: int, attempt: int, which: str = "attempt"):
        self.ctx, self.job_id, self.idx, self.attempt, self.which = ctx, job["job_id"], idx, attempt, which
        self.total = (job.get("video") or {}).get("frames")
        self.whole = int(job.get("chunks") or 1) == 1
        self.render_follows = not self.whole and video_config(job).write_video
        self.stop = threading.Event()  # set when the job is cancelled
        self.pending: list[dict[str, Any]] = []
        self.tracks: list[Any] = []
        self.last = self.last_live = 0.0
        self.live_path = ctx.job_dir(self.job_id) / LIVE_FILE

    def __call__(self, done: int, fps: float = 0.0) -> None:
        now = time.monotonic()
        if now - self.last >= self.ctx.progress_interval:
            self.last = now
            with self.ctx.store.tx() as tx:
                self.commit(tx, done, fps)

    def commit(self, tx: Tx, done: int, fps: float = 0.0, result: Any = ..., **chunk: Any) -> dict[str, Any]:
        """Progress (and ``chunk`` changes, a ``result``) of this attempt, fenced; returns the job."""
        job, row = fenced(tx, self.job_id, self.idx, self.attempt, self.which)
        row.update({"frames_done" if self.which == "attempt" else "rendered": done, **chunk})
        tx.put_chunk(row, result=result)
        chunks = tx.chunks(self.job_id)
        changes = {"heartbeat": time.time(), "progress": _progress(chunks, self.total, self.render_follows),
                   "frames_done": sum(int(c["frames_done"] or 0) for c in chunks)}
        if fps and self.whole:
            changes["fps"] = round(fps, 2)
        if self.pending:
            tx.add_frames(self.job_id, self.pending)
            self.pending = []
        if job["cancel"]:
            self.stop.set()
        return tx.put_job({**job, **changes})

    def on_frame(self, result: FrameResult) -> None:
        if self.whole:
            self.pending.append(result.to_dict())
        self.live(result)

    def on_track_end(self, track: Any) -> None:
        self.tracks.append(track)

    def live(self, result: FrameResult) -> None:
        now = time.monotonic()
        if now - self.last_live < self.ctx.live_interval:
            return
        self.last_live = now
        ok, buf = cv2.imencode(".jpg", result.annotated(), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            tmp = self.live_path.with_name(f".{LIVE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
            with contextlib.suppress(OSError):
                write_private(tmp, buf.tobytes())
                os.replace(tmp, self.live_path)


# --- the tasks ------------------------------------------------------------------------------------------------
def execute(ctx: TaskContext, job_id: str, kind: str, idx: int) -> None:
    """Run one task.  Expected failures (a bad video, a limit) fail the job here; unexpected
    exceptions propagate (the executor retries or fails the job)."""
    try:
        TASKS[kind](ctx, job_id, idx)
    except Superseded as exc:
        log.info("%s", exc)
    except ServiceUnavailableError:
        raise  # the database was busy or away: worth a retry
    except FaceRecError as exc:
        fail_job(ctx.store, job_id, exc.message)
    finally:
        with contextlib.suppress(Exception):
            if ctx.store.get(job_id)["status"] not in ACTIVE:
                (ctx.job_dir(job_id) / LIVE_FILE).unlink(missing_ok=True)


def _claim(ctx: TaskContext, job_id: str, idx: int, kind: str) -> tuple[dict, dict, int] | None:
    """Take chunk ``idx`` for ``kind`` (``analyze`` or ``render``): (job, chunk, attempt); None when that work
    is done already, the job has ended (or was cancelled now) or is not in that phase."""
    status_col, attempt_col = ("status", "attempt") if kind == "analyze" else ("render_status", "render_attempt")
    with ctx.store.tx() as tx:
        job = tx.job(job_id, lock=True)
        if job is None:  # deleted meanwhile, or this worker looks at another database than the API
            log.warning("video job %s is not in this worker's job database %r: task dropped", job_id, ctx.store)
            return None
        if job["status"] not in ACTIVE or job["phase"] != kind:
            return None
        if job["cancel"]:
            tx.put_job({**job, "status": "cancelled", "finished_at": now_iso()})
            return None
        chunk = tx.chunk(job_id, idx, lock=True)
        if chunk is None:
            raise FaceRecError(f"video job {job_id} has no chunk {idx}")
        if chunk[status_col] == "done":
            return None
        attempt = int(chunk[attempt_col] or 0) + 1
        chunk.update({status_col: "running", attempt_col: attempt, "worker": ctx.worker})
        chunk["frames_done" if kind == "analyze" else "rendered"] = 0
        tx.put_chunk(chunk)
        workers = list(dict.fromkeys([*(job.get("workers") or []), ctx.worker]))[-32:]
        changes = {"heartbeat": time.time(), "workers": workers, "attempts": int(job.get("attempts") or 0) + 1}
        if job["status"] == "queued":
            changes.update(status="running", started_at=now_iso())
        if kind == "analyze" and job.get("chunks", 1) == 1:
            tx.delete_frames(job_id)  # a retry starts from an empty page
            changes.update(progress=0.0, frames_done=0)
        return tx.put_job({**job, **changes}), chunk, attempt


def _ready(ctx: TaskContext, job_id: str, phase: str, column: str) -> dict[str, Any] | None:
    """The job once every chunk's ``column`` is ``done``; None when it ended or left ``phase``.

    RQ starts a stage when the tasks of the one before have ended; a chunk that is not done then
    is being retried elsewhere (its first worker was given up on), so wait for it."""
    while True:
        job = ctx.store.get(job_id)
        if job["status"] != "running" or job["phase"] != phase:
            return None
        if job["cancel"]:
            cancel_job(ctx.store, job_id)
            return None
        if all(c[column] == "done" for c in ctx.store.chunks(job_id)):
            return job
        time.sleep(0.5)


def _analyze(ctx: TaskContext, job_id: str, idx: int) -> None:
    claimed = _claim(ctx, job_id, idx, "analyze")
    if claimed is not None:
        job, chunk, attempt = claimed
        (_run_whole if job.get("chunks", 1) == 1 else _run_range)(ctx, job, chunk, attempt)


def _run_whole(ctx: TaskContext, job: dict[str, Any], chunk: dict[str, Any], attempt: int) -> None:
    """A one-chunk job: the video as ``test_frame.py`` runs it, frames committed as they come."""
    job_id = job["job_id"]
    d = ctx.job_dir(job_id)
    run_dir = f"run-{attempt}"
    shutil.rmtree(d / run_dir, ignore_errors=True)
    tick = _Ticker(ctx, job, 0, attempt)
    summary = process_video(d / job["input"], d / run_dir, ctx.recognizer_for(job.get("config")), job["gallery"],
                            video_config(job), progress=lambda done, _total, fps: tick(done, fps), hooks=[tick],
                            stop=tick.stop, **frame_limits(job))
    status = "cancelled" if summary["stopped"] else "done"
    keys = ("frames", "seconds", "fps", "tracks", "named_tracks", "people", "name_switches")
    with ctx.store.tx() as tx:
        job = tick.commit(tx, summary["frames"], status="done")
        tx.set_tracks(job_id, [t.to_dict() for t in sorted(tick.tracks, key=lambda t: t.track_id)])
        tx.put_job({**job, "status": status, "phase": "final", "progress": 1.0 if status == "done" else job["progress"],
                    "fps": summary["fps"], "finished_at": now_iso(), "result_dir": run_dir,
                    "summary": {k: summary[k] for k in keys}})


def _run_range(ctx: TaskContext, job: dict[str, Any], chunk: dict[str, Any], attempt: int) -> None:
    job_id, idx = job["job_id"], chunk["idx"]
    d = ctx.job_dir(job_id)
    crops = f"chunks/a{idx}-{attempt}"
    tick = _Ticker(ctx, job, idx, attempt)
    result = analyze_range(d / job["input"], chunk["start_frame"], chunk["end_frame"],
                           int(job.get("overlap_frames") or 0), ctx.recognizer_for(job.get("config")),
                           job["gallery"], video_config(job), crops_dir=d / crops, progress=tick,
                           on_frame=tick.live, stop=tick.stop, **frame_limits(job))
    if result["stopped"]:
        cancel_job(ctx.store, job_id)
        return
    result["crops_dir"] = crops
    with ctx.store.tx() as tx:
        tick.commit(tx, result["end"] - result["start"], result=result, status="done")


def _join(ctx: TaskContext, job_id: str, _idx: int = 0) -> None:
    """Join the analysed ranges; frames, tracks and summary committed in one transaction."""
    job = _ready(ctx, job_id, "analyze", "status")
    if job is None:
        return
    with ctx.store.tx() as tx:
        results = tx.chunk_results(job_id)
    cfg = video_config(job)
    decide = judge_decider(ctx.recognizer_for(job.get("config")), job["gallery"], cfg)
    joined = join_chunks(results, decide, save_unknown_crops=cfg.save_unknown_crops)
    d = ctx.job_dir(job_id)
    result_dir = f"final-{secrets.token_hex(4)}"
    out = d / result_dir
    private_dir(out)
    for k, name, dest in joined["crops"]:
        private_dir((out / dest).parent)
        with contextlib.suppress(OSError):
            private_file(shutil.copyfile(d / results[k]["crops_dir"] / name, out / dest))
    frames, tracks, summary = joined["frames"], joined["tracks"], joined["summary"]
    # the files a one-pass run leaves, for whoever reads the folder
    write_private(out / "frames.jsonl", "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in frames))
    write_private(out / "tracks.json", json.dumps(tracks, indent=2, ensure_ascii=False))
    with ctx.store.tx() as tx:
        cur = tx.job(job_id, lock=True)
        won = cur is not None and cur["status"] == "running" and cur["phase"] == "analyze"
        if won:
            tx.delete_frames(job_id)
            if frames:
                tx.add_frames(job_id, frames)
            tx.set_tracks(job_id, tracks)
            changes: dict[str, Any] = {"result_dir": result_dir, "heartbeat": time.time(), "frames_done": len(frames)}
            if cfg.write_video:
                changes.update(phase="render", pending_summary=summary, progress=ANALYSIS_SHARE)
            else:
                changes.update(phase="final", status="done", progress=1.0, finished_at=now_iso(),
                               summary=_with_timing(summary, cur))
            tx.put_job({**cur, **changes})
    if not won:
        shutil.rmtree(out, ignore_errors=True)


def _render(ctx: TaskContext, job_id: str, idx: int) -> None:
    claimed = _claim(ctx, job_id, idx, "render")
    if claimed is None:
        return
    job, chunk, attempt = claimed
    d = ctx.job_dir(job_id)
    start, end = chunk["start_frame"], chunk["end_frame"]
    with ctx.store.tx() as tx:
        frames = tx.frames(job_id, start, end)
    seg = Path("segments") / f"{idx}-{attempt}.mp4"
    tmp = d / seg.with_name(f".{idx}-{attempt}.tmp.mp4")
    private_dir(tmp.parent)
    tick = _Ticker(ctx, job, idx, attempt, "render_attempt")
    n = render_range(d / job["input"], start, end, frames, tmp, video_config(job).video_codec, stop=tick.stop,
                     progress=tick)
    if tick.stop.is_set():
        tmp.unlink(missing_ok=True)
        cancel_job(ctx.store, job_id)
        return
    os.replace(tmp, d / seg)
    with ctx.store.tx() as tx:
        tick.commit(tx, n, render_status="done", segment=str(seg))


def _finish(ctx: TaskContext, job_id: str, _idx: int = 0) -> None:
    """Concatenate the rendered segments into ``annotated.mp4``; the job is ``done``."""
    job = _ready(ctx, job_id, "render", "render_status")
    if job is None:
        return
    d = ctx.job_dir(job_id)
    out = d / job["result_dir"] / "annotated.mp4"
    tmp = out.with_name(f".annotated.{secrets.token_hex(4)}.tmp.mp4")
    method = concat_videos([d / c["segment"] for c in ctx.store.chunks(job_id)], tmp)
    os.replace(tmp, out)  # an identical file if two tasks got here together
    with ctx.store.tx() as tx:
        cur = tx.job(job_id, lock=True)
        if cur is None or cur["status"] != "running" or cur["phase"] != "render":
            return
        summary = _with_timing(dict(cur.get("pending_summary") or {}, concat=method), cur)
        tx.put_job({**cur, "status": "done", "phase": "final", "progress": 1.0, "finished_at": now_iso(),
                    "summary": summary, "fps": summary.get("fps"), "pending_summary": None})
    for sub in ("segments", "chunks"):  # intermediate files; results are in the result folder
        shutil.rmtree(d / sub, ignore_errors=True)


TASKS: dict[str, Callable[[TaskContext, str, int], None]] = {
    "analyze": _analyze, "join": _join, "render": _render, "finish": _finish,
}
