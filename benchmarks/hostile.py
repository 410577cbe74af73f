"""Hostile clients against a real server: MJPEG viewers, slow-header clients; ``/health`` and ``/recognition``
measured meanwhile.

    python -m benchmarks.hostile --server waitress --mjpeg 32 --duration 30
    python -m benchmarks.hostile --server gunicorn --slow-headers 50 --duration 30
    python -m benchmarks.hostile --server gunicorn --slow-headers 50 --gunicorn-arg=-k --gunicorn-arg=gthread  # stock

Starts ``python app.py`` (waitress) or gunicorn with the shipped ``gunicorn.conf.py`` on a free loopback port
(``--root``: another checkout of the project, e.g. an older commit), makes a finished video job from a
generated clip (one frame a second, so that its MJPEG stream lasts ``--clip-seconds``), then for
``--duration`` seconds runs the hostile clients while probing ``/health`` (one request after the other) and
``POST /recognition`` (a real one-face photo).  ``--env NAME=VALUE`` passes settings to the server (e.g.
``FACEREC_STREAM_SLOTS=1000`` lifts the stream bound).  Prints one JSON line: the latencies (ms), the probes
that failed or took over ``--probe-timeout``, the streams served and refused.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from benchmarks.load import DEFAULT_IMAGE, free_port, multipart, one_face_jpeg, percentile, wait_ready

ROOT = Path(__file__).resolve().parents[1]


# --- a video that makes a long MJPEG stream ---------------------------------------------------------------------
def make_clip(seconds: int = 40, fps: float = 1.0, size: tuple[int, int] = (160, 120)) -> bytes:
    """An MP4 of moving grey shapes at ``fps`` (a stream of the finished job plays at this rate)."""
    import cv2
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="facerec-clip-") as tmp:
        path = Path(tmp) / "clip.mp4"
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        for i in range(int(seconds * fps)):
            frame = np.full((size[1], size[0], 3), 90, np.uint8)
            cv2.circle(frame, (10 + (i * 7) % (size[0] - 20), size[1] // 2), 8, (200, 200, 200), -1)
            w.write(frame)
        w.release()
        return path.read_bytes()


def pad_mp4(data: bytes, total: int) -> bytes:
    """``data`` grown to ``total`` bytes with an MP4 ``free`` box (skipped by every reader)."""
    extra = total - len(data)
    if extra < 8:
        return data
    return data + struct.pack(">I4s", extra, b"free") + bytes(extra - 8)


def finished_job(url: str, clip: bytes, timeout: float = 120.0) -> str:
    """Upload ``clip`` as a video job and wait until it is done; its id."""
    import requests

    r = requests.post(url + "/api/v1/videos", files={"file": ("clip.mp4", clip, "video/mp4")}, timeout=60)
    if r.status_code != 202:
        raise RuntimeError(f"video upload failed: {r.status_code} {r.text[:300]}")
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/api/v1/videos/{job_id}", timeout=10).json()["status"]
        if status == "done":
            return job_id
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"the video job ended {status}")
        time.sleep(0.3)
    raise RuntimeError("the video job did not finish in time")


# --- hostile clients --------------------------------------------------------------------------------------------
class Viewers:
    """``n`` MJPEG viewers of one job, each reading its stream until stopped; a 503 (or 429) is retried after
    its ``Retry-After``.  ``served``: streams that got 200; ``refused``: 503/429 answers (JSON envelope
    checked).  With ``own_addresses`` (loopback only) each viewer connects from its own address
    (127.0.0.10, .11, ...), as distinct clients would."""

    def __init__(self, url: str, job_id: str, n: int, own_addresses: bool = False):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = f"/api/v1/videos/{job_id}/stream"
        self.n = n
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.served = self.refused = self.frames = 0
        self.bad: list[str] = []
        self.threads = [
            threading.Thread(target=self._view, args=((f"127.0.0.{10 + i}", 0) if own_addresses else None,),
                             daemon=True)
            for i in range(n)
        ]

    def _view(self, source: tuple[str, int] | None) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30, source_address=source)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                if resp.status == 200:
                    with self.lock:
                        self.served += 1
                    while not self.stop.is_set():
                        chunk = resp.read1(65536)
                        if not chunk:
                            break
                        with self.lock:
                            self.frames += chunk.count(b"--frame")
                    continue
                body = resp.read()
                ok = (resp.status in (429, 503) and resp.getheader("Retry-After")
                      and set(json.loads(body)) == {"error"})
                with self.lock:
                    if ok:
                        self.refused += 1
                    else:
                        self.bad.append(f"{resp.status} {body[:200]!r}")
                self.stop.wait(float(resp.getheader("Retry-After") or 1))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if not self.stop.is_set():
                    with self.lock:
                        self.bad.append(repr(exc))
                    self.stop.wait(1)
            finally:
                conn.close()

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)


class SlowHeaders:
    """``n`` clients that each send a request line and then one header byte every ``interval`` seconds,
    never finishing the head; a client the server disconnects connects again."""

    def __init__(self, host: str, port: int, n: int, interval: float = 1.0):
        self.host, self.port, self.n, self.interval = host, port, n, interval
        self.stop = threading.Event()
        self.connects = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self) -> socket.socket | None:
        try:
            s = socket.create_connection((self.host, self.port), timeout=5)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        except OSError:
            return None
        with self.lock:
            self.connects += 1
        return s

    def _run(self) -> None:
        socks: list[socket.socket | None] = [self._connect() for _ in range(self.n)]
        while not self.stop.wait(self.interval):
            for i, s in enumerate(socks):
                try:
                    if s is None:
                        raise OSError
                    s.sendall(b"a")
                except OSError:
                    if s is not None:
                        s.close()
                    socks[i] = self._connect()
        for s in socks:
            if s is not None:
                s.close()

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


# --- probes -----------------------------------------------------------------------------------------------------
def health_latencies(url: str, seconds: float, timeout: float = 5.0) -> tuple[list[float], int]:
    """``GET /health`` one after the other (a new connection each) for ``seconds``: latencies in ms, failures
    (errors and answers slower than ``timeout``)."""
    parts = urlsplit(url)
    lat: list[float] = []
    failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
        except (OSError, http.client.HTTPException):
            ok = False
        if ok:
            lat.append((time.perf_counter() - t0) * 1000)
        else:
            failed += 1
        time.sleep(0.05)
    return lat, failed


def recognize(url: str, image: bytes, timeout: float = 30.0) -> tuple[int, float, dict]:
    """``POST /recognition`` of ``image``: status, latency in ms, JSON body."""
    parts = urlsplit(url)
    body, ctype = multipart({"file": ("probe.jpg", image, "image/jpeg")})
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        conn.request("POST", "/recognition", body, {"Content-Type": ctype})
        resp = conn.getresponse()
        status, data = resp.status, resp.read()
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        return 0, (time.perf_counter() - t0) * 1000, {"error": repr(exc)}
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = {"raw": data[:200].decode("latin1")}
    return status, (time.perf_counter() - t0) * 1000, parsed


# --- a server ---------------------------------------------------------------------------------------------------
@contextmanager
def server(kind: str, data_dir: Path, env: dict[str, str] | None = None, gunicorn_args: list[str] | None = None,
           root: Path = ROOT, workers: int = 2) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python app.py`` or gunicorn (the shipped ``gunicorn.conf.py``) of ``root`` on a free loopback port."""
    port = free_port()
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", FACEREC_DATA_DIR=str(data_dir), **(env or {}))
    if kind == "gunicorn":
        full_env.update(FACEREC_BIND=f"127.0.0.1:{port}")
        full_env.setdefault("FACEREC_WORKERS", str(workers))
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(root / "gunicorn.conf.py"), *(gunicorn_args or [])]
    else:
        cmd = [sys.executable, str(root / "app.py"), "--port", str(port), "--log-level", "WARNING"]
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready("127.0.0.1", port, timeout=120, proc=proc)
        except SystemExit as exc:
            raise RuntimeError(f"{exc}; end of its log:\n{log_path.read_text(errors='replace')[-3000:]}") from None
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summary(lat: list[float], failed: int) -> dict:
    return {"n": len(lat), "failed": failed, "p50_ms": round(percentile(lat, 50), 1),
            "p99_ms": round(percentile(lat, 99), 1), "max_ms": round(max(lat), 1) if lat else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=["waitress", "gunicorn"], default="waitress")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose app.py / gunicorn.conf.py to run")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--gunicorn-arg", action="append", default=[], help="extra gunicorn argument (repeat)")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeat)")
    ap.add_argument("--mjpeg", type=int, default=0, help="MJPEG viewers of a finished job")
    ap.add_argument("--one-address", action="store_true",
                    help="every viewer from 127.0.0.1 (default: each from its own loopback address)")
    ap.add_argument("--slow-headers", type=int, default=0, help="clients that never finish their request head")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of hostile clients (default 30)")
    ap.add_argument("--clip-seconds", type=int, default=120, help="length of the job's MJPEG stream")
    ap.add_argument("--probe-timeout", type=float, default=5.0, help="a /health slower than this failed")
    args = ap.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    image = one_face_jpeg(DEFAULT_IMAGE)
    with tempfile.TemporaryDirectory(prefix="facerec-hostile-") as tmp, \
            server(args.server, Path(tmp) / "data", env, args.gunicorn_arg, args.root, args.workers) as (url, _):
        host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 80
        job_id = finished_job(url, make_clip(args.clip_seconds)) if args.mjpeg else None
        idle, idle_failed = health_latencies(url, 3.0, args.probe_timeout)
        viewers = Viewers(url, job_id, args.mjpeg, own_addresses=not args.one_address) if job_id else None
        slow = SlowHeaders(host, port, args.slow_headers) if args.slow_headers else None
        if viewers:
            viewers.__enter__()
        if slow:
            slow.__enter__()
        try:
            time.sleep(2.0)  # let them take what they can
            recog = [recognize(url, image, timeout=args.probe_timeout * 6)]
            lat, failed = health_latencies(url, args.duration - 2.0, args.probe_timeout)
            recog.append(recognize(url, image, timeout=args.probe_timeout * 6))
        finally:
            if slow:
                slow.__exit__()
            if viewers:
                viewers.__exit__()
    res = {
        "server": args.server + (" " + " ".join(args.gunicorn_arg) if args.gunicorn_arg else ""),
        "env": env, "mjpeg_viewers": args.mjpeg, "slow_header_clients": args.slow_headers,
        "duration_s": args.duration, "health_idle": summary(idle, idle_failed), "health": summary(lat, failed),
        "recognition": [{"status": s, "ms": round(ms, 1)} for s, ms, _ in recog],
        "streams_served": viewers.served if viewers else None, "streams_refused": viewers.refused if viewers else None,
        "stream_errors": viewers.bad[:3] if viewers else None,
        "slow_header_connects": slow.connects if slow else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
