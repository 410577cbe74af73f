"""After a restart: jobs whose in-process executor died, and job folders written by earlier versions.

A job run in-process belongs to its server process (``owner`` = ``host:pid:nonce``, a heartbeat every few seconds).
Earlier versions kept each job in a folder (``job.json``, ``frames.jsonl``, ``tracks.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..files import write_private
from ..storage.jobs import ACTIVE, JobNotFoundError, JobStore, now_iso

STATE_FILE = "job.json"
RESTARTED = "server restarted before the job finished"


def validate_job_id(job_id: Any) -> str:
    """The canonical UUID string, or :class:`JobNotFoundError` (never a path)."""
    try:
        if isinstance(job_id, str) and len(job_id) == 36 and str(uuid.UUID(job_id)) == job_id.lower():
            return job_id.lower()
    except ValueError:
        pass
    raise JobNotFoundError("no such video job")


def write_state(job_dir: Path, state: dict[str, Any]) -> None:
    """A ``job.json`` as earlier versions wrote it (imported into the store at the next start)."""
    tmp = Path(job_dir) / f".{STATE_FILE}.{threading.get_ident()}.tmp"
    write_private(tmp, json.dumps(state, indent=2, ensure_ascii=False))
    os.replace(tmp, Path(job_dir) / STATE_FILE)


def import_job_folders(store: JobStore, jobs_dir: Path) -> int:
    """Job folders of earlier versions into the store (each once); returns how many were left unfinished."""
    failed = 0
    for d in jobs_dir.iterdir():
        try:
            job_id = validate_job_id(d.name)
            state = json.loads((d / STATE_FILE).read_text(encoding="utf-8"))
        except (JobNotFoundError, OSError, ValueError):  # not a job folder, or its state is unreadable
            continue
        state.update(job_id=job_id, executor="inprocess", owner=None, phase="final", result_dir="")
        state.setdefault("created_at", now_iso())
        active = state.get("status") in ACTIVE
        if active:
            state.update(status="failed", error=RESTARTED, finished_at=now_iso())
        frames, tracks = [], None
        with contextlib.suppress(OSError, ValueError), open(d / "frames.jsonl", encoding="utf-8") as fh:
            frames = [json.loads(line) for line in fh if line.endswith("\n")]
        with contextlib.suppress(OSError, ValueError):
            tracks = json.loads((d / "tracks.json").read_text(encoding="utf-8"))
        with store.tx() as tx:
            if tx.job(job_id) is None:
                failed += active
                tx.put_job(state)
                if frames:
                    tx.add_frames(job_id, frames)
                tx.set_tracks(job_id, tracks)
        with contextlib.suppress(OSError):
            os.replace(d / STATE_FILE, d / f"{STATE_FILE}.imported")
    return failed


def owner_dead(job: dict[str, Any], stale_after: float) -> bool:
    """Whether the in-process executor that owns ``job`` is gone (no such process here, or no heartbeat)."""
    owner = str(job.get("owner") or "")
    parts = owner.split(":")
    if not owner:
        return True
    if len(parts) == 3 and parts[0] == socket.gethostname() and parts[1].isdigit() and int(parts[1]) != os.getpid():
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # pragma: no cover - someone else's process: alive
            pass
    beat = job.get("heartbeat")
    return beat is None or time.time() - float(beat) > stale_after
