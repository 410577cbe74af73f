"""Load benchmark of ``POST /recognition`` over loopback with a one-face 640x480 JPEG.

    python -m benchmarks.load --url http://127.0.0.1:5000 --duration 30 --concurrency 4
    python -m benchmarks.load --start-server waitress --duration 30 --concurrency 4
    python -m benchmarks.load --start-server gunicorn --duration 120 --concurrency 4   # the soak

``--concurrency`` client threads, each with its own keep-alive connection, post
the same multipart image back to back for ``--duration`` seconds (after a
``--warmup``).  Prints requests/s, p50/p90/p99/max latency in milliseconds and
the errors (any non-200 status or connection failure), then one JSON line.
``--start-server`` starts ``python app.py`` (waitress) or gunicorn on a free
loopback port with a temporary data directory and enrolls the subject first,
so every face is recognised against a non-empty gallery.  Exit status 1 when
any request failed.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_IMAGE = SHARED / "face_recognition_examples" / "images" / "obama.jpg"


def one_face_jpeg(path: Path, size: tuple[int, int] = (640, 480)) -> bytes:
    """The photo letterboxed into ``size`` (grey bars) as a quality-90 JPEG."""
    import cv2
    import numpy as np

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read image {path}")
    w, h = size
    s = min(w / img.shape[1], h / img.shape[0])
    small = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    canvas = np.full((h, w, 3), 127, np.uint8)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def multipart(fields: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, data, ctype) in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(host: str, port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server on {host}:{port} did not become ready in {timeout:.0f} s")


def start_server(kind: str, data_dir: str, workers: int | None, threads: int | None,
                 config: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if config:
        env["FACEREC_CONFIG"] = config
    if kind == "gunicorn":
        env.update(FACEREC_DATA_DIR=data_dir, FACEREC_BIND=f"127.0.0.1:{port}")
        if workers:
            env["FACEREC_WORKERS"] = str(workers)
        if threads:
            env["FACEREC_THREADS"] = str(threads)
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]
    else:
        cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--data-dir", data_dir,
               "--log-level", "WARNING"]
        if threads:
            cmd += ["--threads", str(threads)]
        if config:
            cmd += ["--config", config]
    log = open(Path(data_dir) / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_ready("127.0.0.1", port, proc=proc)
    except SystemExit:
        proc.kill()
        tail = (Path(data_dir) / "server.log").read_text(errors="replace")[-3000:]
        sys.stderr.write(f"--- the server did not start; end of its log:\n{tail}\n---\n")
        raise
    return proc, f"http://127.0.0.1:{port}"


def enroll(host: str, port: int, image: bytes, gallery: str, person: str) -> None:
    body, ctype = multipart({"file": ("subject.jpg", image, "image/jpeg")})
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("POST", f"/api/v1/galleries/{gallery}/people/{person}/faces", body, {"Content-Type": ctype})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 201:
        raise SystemExit(f"enrollment failed: {resp.status} {data[:300]!r}")
    conn.close()


class Worker(threading.Thread):
    def __init__(self, host: str, port: int, path: str, body: bytes, headers: dict[str, str], stop_at: float,
                 record_after: float, expect_name: str | None):
        super().__init__(daemon=True)
        self.host, self.port, self.path, self.body, self.headers = host, port, path, body, headers
        self.stop_at, self.record_after, self.expect_name = stop_at, record_after, expect_name
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.first_error: str | None = None

    def _error(self, what: str, detail: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        if self.first_error is None:
            self.first_error = f"{what}: {detail[:300]}"

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        while True:
            t0 = time.perf_counter()
            if t0 >= self.stop_at:
                break
            try:
                conn.request("POST", self.path, self.body, self.headers)
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200
                if ok and self.expect_name is not None:
                    ok = json.loads(data).get("name") == self.expect_name
                    if not ok:
                        self._error("wrong_name", data.decode("utf-8", "replace"))
                elif not ok:
                    self._error(f"http_{resp.status}", data.decode("utf-8", "replace"))
            except (OSError, http.client.HTTPException) as exc:
                self._error(type(exc).__name__, str(exc))
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                continue
            t1 = time.perf_counter()
            if ok and t0 >= self.record_after:
                self.latencies.append((t1 - t0) * 1000)
        conn.close()


def process_tree_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its live descendants (Linux ``/proc``; ``None`` elsewhere)."""
    proc = Path("/proc")
    if not (proc / str(pid)).exists():
        return None
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
        children.setdefault(ppid, []).append(int(entry.name))
        times[int(entry.name)] = (utime + stime) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def run(url: str, image: bytes, duration: float, concurrency: int, warmup: float, gallery: str,
        expect_name: str | None, server_pid: int | None = None) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body, ctype = multipart({"file": ("frame.jpg", image, "image/jpeg")})
    path = f"/recognition?gallery={gallery}"
    now = time.perf_counter()
    record_after = now + warmup
    stop_at = record_after + duration
    headers = {"Content-Type": ctype}
    workers = [Worker(host, port, path, body, headers, stop_at, record_after, expect_name) for _ in range(concurrency)]
    for w in workers:
        w.start()
    cpu0 = cpu1 = None
    if server_pid is not None:  # server CPU over the measured window: contention-free cost per request
        time.sleep(max(0.0, record_after - time.perf_counter()))
        cpu0 = process_tree_cpu_s(server_pid)
        time.sleep(max(0.0, stop_at - time.perf_counter()))
        cpu1 = process_tree_cpu_s(server_pid)
    for w in workers:
        w.join()
    lat = [x for w in workers for x in w.latencies]
    errors: dict[str, int] = {}
    for w in workers:
        for k, v in w.errors.items():
            errors[k] = errors.get(k, 0) + v
    first = next((w.first_error for w in workers if w.first_error), None)
    cpu_ms = None
    if cpu0 is not None and cpu1 is not None and lat:
        cpu_ms = round((cpu1 - cpu0) * 1000 / len(lat), 1)
    return {
        "url": url,
        "duration_s": duration,
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "first_error": first,
        "req_per_s": round(len(lat) / duration, 2),
        "p50_ms": round(percentile(lat, 50), 2),
        "p90_ms": round(percentile(lat, 90), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(max(lat), 2) if lat else None,
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
        # server CPU time per request (all its processes and threads); 1000 * cores / this = the
        # throughput ceiling on that many idle cores, whatever else ran on the machine meanwhile
        "server_cpu_ms_per_req": cpu_ms,
        "ceiling_req_per_s_2_cores": round(2000 / cpu_ms, 1) if cpu_ms else None,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="base URL of a running server (e.g. http://127.0.0.1:5000)")
    ap.add_argument("--start-server", choices=["waitress", "gunicorn"], help="start a server of this kind instead")
    ap.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: gunicorn.conf.py)")
    ap.add_argument("--threads", type=int, default=None, help="server threads (per worker)")
    ap.add_argument("--config", default=None, help="embedder config of the started server (default configs/sface.yaml)")
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds (default 30)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="a one-face photo, letterboxed to 640x480")
    ap.add_argument("--gallery", default="default")
    ap.add_argument("--no-enroll", action="store_true", help="do not enroll the subject first")
    ap.add_argument("--server-pid", type=int, default=None,
                    help="with --url: the server's process id, to report its CPU time per request")
    args = ap.parse_args(argv)
    if not args.url and not args.start_server:
        ap.error("give --url or --start-server")
    image = one_face_jpeg(args.image)
    proc = None
    tmp = None
    try:
        url = args.url
        if args.start_server:
            tmp = tempfile.TemporaryDirectory(prefix="facerec-load-")
            proc, url = start_server(args.start_server, tmp.name, args.workers, args.threads, args.config)
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        expect = None
        if not args.no_enroll:
            person = "load_subject"
            enroll(host, port, image, args.gallery, person)
            expect = person
        res = run(url, image, args.duration, args.concurrency, args.warmup, args.gallery, expect,
                  server_pid=proc.pid if proc is not None else args.server_pid)
        res["server"] = args.start_server or "external"
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()
    print(
        f"{res['requests']} requests in {res['duration_s']:.0f} s at concurrency {res['concurrency']}:"
        f" {res['req_per_s']} req/s, p50 {res['p50_ms']} ms, p90 {res['p90_ms']} ms, p99 {res['p99_ms']} ms,"
        f" max {res['max_ms']} ms, errors {res['errors']}"
        + (f"; server CPU {res['server_cpu_ms_per_req']} ms/request (2-core ceiling"
           f" {res['ceiling_req_per_s_2_cores']} req/s), load average {res['load_avg_1m']}"
           if res["server_cpu_ms_per_req"] else "")
        + (f" ({res['first_error']})" if res["first_error"] else "")
    )
    print(json.dumps(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
