"""A hostile minute: normal traffic beside decompression bombs, bursts, MJPEG viewers and slow clients.

    python -m benchmarks.adversarial --start-server waitress [--duration 60]
    python -m benchmarks.adversarial --start-server gunicorn [--duration 60]

One fresh server (``python app.py`` or the shipped ``gunicorn.conf.py``) on a
free loopback port, a temporary data directory, API keys on (each
normal client and each kind of attacker has its own key: quotas are per key),
the subject enrolled and one finished video job.  Then two runs of ``--duration`` seconds each:

* **clean**: ``--clients`` threads post a one-face 640x480 JPEG to
  ``/recognition`` back to back (keep-alive), one thread polls ``/health``
  every 100 ms;
* **adversarial**: the same, plus at once
  - bombs: a tiny JPEG declaring 6400x6200, a 16-bit 6300x6300 PNG, an
    enrollment of 20 copies of the JPEG, in turn, back to back (2 threads);
  - bursts: every 5 s, 16 new connections post the normal image at the same moment;
  - a flood: one client fetching ``/api/v1/galleries`` as fast as it can;
  - ``--viewers`` MJPEG viewers of the finished job, reconnecting when a stream ends or is refused;
  - ``--slow`` slow-header clients sending one header byte per second, reconnecting when cut off.

Reported per run: normal requests/s, p50/p99 latency and errors; ``/health``
p99 and max; the attackers' answers by status; the server's peak RSS above
idle (the process and its children).  The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from .hostile_memory import jpeg_bomb, png16_bomb
from .load import DEFAULT_IMAGE, SHARED, Worker, multipart, one_face_jpeg, percentile, start_server

CLIP = SHARED / "face_recognition_examples" / "video_short_hamilton_clip" / "short_hamilton_clip.mp4"


# --- clients --------------------------------------------------------------------------------------
class Tally:
    """Answers by kind and status, shared by attacker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, status: int | str) -> None:
        with self.lock:
            self.counts[f"{kind} {status}"] += 1


KEYS: dict[str, str] = {}  # who -> API key


def create_keys(data_dir: str, names: list[str]) -> None:
    """One admin key per name, made with the key CLI before the server starts."""
    import subprocess
    import sys

    for name in names:
        out = subprocess.run([sys.executable, "-m", "modules.api.keys", "--data-dir", data_dir, "create",
                              "--gallery", "*", "--admin", "--label", name],
                             check=True, capture_output=True, text=True).stdout
        KEYS[name] = out.strip().splitlines()[-1]


def keyed(who: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    return {**(headers or {}), "X-API-Key": KEYS[who]} if who in KEYS else dict(headers or {})


def request(host: str, port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


HEALTH_TIMEOUT_S = 10.0


def poll_health(host: str, port: int, stop_at: float, out: list[float]) -> None:
    """``/health`` every 100 ms; a failure or a timeout counts as the timeout (10 s)."""
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        try:
            status, _ = request(host, port, "GET", "/health", timeout=HEALTH_TIMEOUT_S)
            ok = status == 200
        except OSError:
            ok = False
        out.append((time.perf_counter() - t0) * 1000 if ok else HEALTH_TIMEOUT_S * 1000)
        time.sleep(max(0.0, 0.1 - (time.perf_counter() - t0)))


def bombs(host: str, port: int, stop_at: float, tally: Tally, phase: int) -> None:
    jpeg, png = jpeg_bomb(), png16_bomb()
    enroll_body, enroll_type = multipart({f"file{i}": (f"b{i}.jpg", jpeg, "image/jpeg") for i in range(20)})
    cases = [
        ("jpeg_bomb", "/recognition", *multipart({"file": ("bomb.jpg", jpeg, "image/jpeg")})),
        ("png16_bomb", "/recognition", *multipart({"file": ("bomb.png", png, "image/png")})),
        ("enroll_20_bombs", "/api/v1/galleries/bombs/people/p/faces", enroll_body, enroll_type),
    ]
    i = phase
    while time.monotonic() < stop_at:
        kind, path, body, ctype = cases[i % len(cases)]
        i += 1
        try:
            status, _ = request(host, port, "POST", path, body, keyed("bombs", {"Content-Type": ctype}))
        except OSError as exc:
            status = type(exc).__name__
        tally.add(kind, status)


def bursts(host: str, port: int, stop_at: float, tally: Tally, image: bytes, size: int = 16) -> None:
    body, ctype = multipart({"file": ("face.jpg", image, "image/jpeg")})

    def one() -> None:
        try:
            status, _ = request(host, port, "POST", "/recognition", body, keyed("bursts", {"Content-Type": ctype}))
        except OSError as exc:
            status = type(exc).__name__
        tally.add("burst", status)

    while time.monotonic() < stop_at:
        threads = [threading.Thread(target=one, daemon=True) for _ in range(size)]
        for t in threads:
            t.start()
        time.sleep(5.0)


def flood(host: str, port: int, stop_at: float, tally: Tally) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    while time.monotonic() < stop_at:
        try:
            conn.request("GET", "/api/v1/galleries", headers=keyed("flood"))
            resp = conn.getresponse()
            resp.read()
            tally.add("flood", resp.status)
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
        except (OSError, http.client.HTTPException) as exc:
            tally.add("flood", type(exc).__name__)
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=30)
            time.sleep(0.05)
    conn.close()


def viewer(host: str, port: int, path: str, stop_at: float, tally: Tally) -> None:
    while time.monotonic() < stop_at:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", path, headers=keyed("viewers"))
            resp = conn.getresponse()
            tally.add("mjpeg", resp.status)
            while time.monotonic() < stop_at and resp.read(65536):
                pass
        except (OSError, http.client.HTTPException) as exc:
            tally.add("mjpeg", type(exc).__name__)
        finally:
            conn.close()
        time.sleep(0.5)


def slow_client(host: str, port: int, stop_at: float, tally: Tally) -> None:
    header = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000
    while time.monotonic() < stop_at:
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                for i in range(len(header)):
                    if time.monotonic() >= stop_at:
                        break
                    s.sendall(header[i : i + 1])
                    time.sleep(1.0)
                tally.add("slow", "held to the end")
        except OSError as exc:
            tally.add("slow", f"cut off ({type(exc).__name__})")
            time.sleep(0.5)


def sample_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    import psutil

    root = psutil.Process(pid)
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            out.append(sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)


# --- runs -----------------------------------------------------------------------------------------
def make_job(host: str, port: int) -> str:
    body, ctype = multipart({"file": ("clip.mp4", CLIP.read_bytes(), "video/mp4")})
    status, data = request(host, port, "POST", "/api/v1/videos", body, keyed("normal", {"Content-Type": ctype}),
                           timeout=120)
    if status != 202:
        raise SystemExit(f"video upload failed: {status} {data[:300]!r}")
    job = json.loads(data)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status, data = request(host, port, "GET", f"/api/v1/videos/{job['job_id']}", headers=keyed("normal"))
        state = json.loads(data)
        if state["status"] in ("done", "failed", "cancelled"):
            if state["status"] != "done":
                raise SystemExit(f"the video job ended {state['status']}")
            return state["stream_url"] if state.get("stream_url") else f"/api/v1/videos/{job['job_id']}/stream"
        time.sleep(0.5)
    raise SystemExit("the video job did not finish")


def one_run(host: str, port: int, pid: int, image: bytes, duration: float, clients: int, hostile: bool,
            stream_path: str, viewers: int, slow: int) -> dict:
    body, ctype = multipart({"file": ("face.jpg", image, "image/jpeg")})
    start = time.monotonic()
    stop_at = start + duration
    health: list[float] = []
    rss: list[int] = []
    tally = Tally()
    stop_rss = threading.Event()
    threads = [threading.Thread(target=sample_rss, args=(pid, stop_rss, rss), daemon=True),
               threading.Thread(target=poll_health, args=(host, port, stop_at, health), daemon=True)]
    workers = [Worker(host, port, "/recognition", body, keyed(f"normal{i}", {"Content-Type": ctype}), stop_at, start,
                      "subject")
               for i in range(clients)]
    if hostile:
        threads += [threading.Thread(target=bombs, args=(host, port, stop_at, tally, i), daemon=True)
                    for i in range(2)]
        threads.append(threading.Thread(target=bursts, args=(host, port, stop_at, tally, image), daemon=True))
        threads.append(threading.Thread(target=flood, args=(host, port, stop_at, tally), daemon=True))
        threads += [threading.Thread(target=viewer, args=(host, port, stream_path, stop_at, tally), daemon=True)
                    for _ in range(viewers)]
        threads += [threading.Thread(target=slow_client, args=(host, port, stop_at, tally), daemon=True)
                    for _ in range(slow)]
    for t in [*threads, *workers]:
        t.start()
    for w in workers:
        w.join(duration + 120)
    stop_rss.set()
    for t in threads:
        t.join(15)
    latencies = [x for w in workers for x in w.latencies]
    errors: Counter[str] = Counter()
    for w in workers:
        errors.update(w.errors)
    return {
        "normal_requests_per_s": round(len(latencies) / duration, 2),
        "normal_p50_ms": round(percentile(latencies, 50), 1),
        "normal_p99_ms": round(percentile(latencies, 99), 1),
        "normal_errors": dict(errors),
        "health_polls": len(health),
        "health_p99_ms": round(percentile(health, 99), 1),
        "health_max_ms": round(max(health), 1) if health else None,
        "peak_rss_mb": round(max(rss) / 2**20, 1) if rss else None,
        "attackers": dict(sorted(tally.counts.items())),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start-server", choices=("waitress", "gunicorn"), default="waitress")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=2, help="normal clients (default 2)")
    ap.add_argument("--viewers", type=int, default=8, help="MJPEG viewers (default 8)")
    ap.add_argument("--slow", type=int, default=50, help="slow-header clients (default 50)")
    ap.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: the server's)")
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    args = ap.parse_args(argv)

    import psutil

    image = one_face_jpeg(args.image)
    with tempfile.TemporaryDirectory(prefix="facerec-adversarial-") as data_dir:
        create_keys(data_dir, ["normal", *(f"normal{i}" for i in range(args.clients)), "bombs", "bursts", "flood",
                               "viewers"])
        os.environ["FACEREC_API_KEYS"] = "1"
        proc, url = start_server(args.start_server, data_dir, args.workers, None)
        try:
            parts = urlsplit(url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            body, ctype = multipart({"file": ("subject.jpg", image, "image/jpeg")})
            status, data = request(host, port, "POST", "/api/v1/galleries/default/people/subject/faces", body,
                                   keyed("normal", {"Content-Type": ctype}))
            if status != 201:
                raise SystemExit(f"enrollment failed: {status} {data[:300]!r}")
            stream_path = make_job(host, port)
            time.sleep(2.0)
            root = psutil.Process(proc.pid)
            idle = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
            result: dict = {"server": args.start_server, "duration_s": args.duration, "idle_rss_mb": round(idle, 1)}
            for name, hostile in (("clean", False), ("adversarial", True)):
                r = one_run(host, port, proc.pid, image, args.duration, args.clients, hostile, stream_path,
                            args.viewers, args.slow)
                r["peak_rss_above_idle_mb"] = round(r.pop("peak_rss_mb") - idle, 1)
                result[name] = r
                print(f"{name:12s} normal {r['normal_requests_per_s']:6.1f} req/s  p50 {r['normal_p50_ms']:7.1f} ms"
                      f"  p99 {r['normal_p99_ms']:7.1f} ms  errors {r['normal_errors']}  |  /health p99"
                      f" {r['health_p99_ms']} ms, max {r['health_max_ms']} ms  |  peak RSS +"
                      f"{r['peak_rss_above_idle_mb']} MB", flush=True)
                if hostile:
                    for k, v in r["attackers"].items():
                        print(f"    {k:40s} {v}")
                time.sleep(3.0)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except Exception:  # noqa: BLE001 - a stuck server is killed
                proc.kill()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
