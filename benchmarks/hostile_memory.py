"""Memory and time that hostile images cost a real server: peak RSS above idle per case, alone and in parallel.

    python -m benchmarks.hostile_memory                       # starts python app.py on a free port
    python -m benchmarks.hostile_memory --parallel 8 --max-queued 5
    python -m benchmarks.hostile_memory --decode-only         # only the in-process decode time of the bomb

The files are generated here: a tiny JPEG whose header declares 6400x6200 pixels (a few hundred
bytes that decode to 40 Mpx of grey), an all-black 16-bit 6300x6300 PNG (about 80 KB) and an
enrollment of 20 copies of that JPEG; alone, also a face photo upscaled 5x (over the decode
budget) and an enrollment of 10 copies of it upscaled 4x (12 Mpx each).  For each case the
server's resident memory is sampled every 10 ms while the request(s) run, and ``/health`` is
polled throughout; the table gives the peak above the RSS measured just before the case, the
wall time, the answers' status codes and the slowest ``/health`` answer.  The decode time of the
bomb is measured in this process, at the decode budget and as detection decodes it (a preview).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.load import SHARED, start_server

BOMB_SIZE = (6400, 6200)
PNG16_SIDE = 6300
ENROLL_COPIES = 20
MB = 1024 * 1024
DEFAULT_IMAGE = SHARED / "face_recognition_examples" / "images" / "obama2.jpg"


# --- the hostile files ----------------------------------------------------------------------------
def jpeg_bomb(width: int = BOMB_SIZE[0], height: int = BOMB_SIZE[1]) -> bytes:
    """A valid 16x16 grey JPEG whose frame header is rewritten to declare ``width`` x ``height``.

    Decoders fill the missing scan data with grey: a few hundred bytes become a full-size image.
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, "JPEG", quality=50)
    data = bytearray(buf.getvalue())
    i = 2
    while i + 4 <= len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):  # SOF: precision, height, width
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no frame header in the generated JPEG")  # pragma: no cover


def png16_bomb(side: int = PNG16_SIDE) -> bytes:
    """An all-black 16-bit greyscale PNG of ``side`` x ``side`` (it compresses about 1000:1)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint16)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def upscaled_jpeg(photo: bytes, factor: float, quality: int = 80) -> bytes:
    """``photo`` enlarged ``factor`` times (bicubic) as a JPEG: a real face in a very large image."""
    from PIL import Image

    img = Image.open(io.BytesIO(photo)).convert("RGB")
    big = img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# --- measuring a server ---------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """The peak resident memory of process ``pid``, sampled every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, pid: int, interval: float = 0.01):
        import psutil

        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return self.peak


class HealthProbe(threading.Thread):
    """``GET /health`` every ``interval`` seconds until :meth:`stop`: the slowest answer and the failures."""

    def __init__(self, url: str, interval: float = 0.05, timeout: float = 10.0):
        super().__init__(daemon=True)
        self.url, self.interval, self.timeout = url, interval, timeout
        self.slowest = 0.0
        self.answers = 0
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        import requests

        with requests.Session() as s:
            while not self._halt.is_set():
                t0 = time.perf_counter()
                try:
                    r = s.get(self.url + "/health", timeout=self.timeout)
                    if r.status_code != 200:
                        self.failures.append(f"status {r.status_code}")
                except requests.RequestException as exc:
                    self.failures.append(type(exc).__name__)
                self.slowest = max(self.slowest, time.perf_counter() - t0)
                self.answers += 1
                self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def idle_rss(pid: int, settle: float = 0.3) -> int:
    """The process's RSS once it has been quiet for ``settle`` seconds."""
    import psutil

    time.sleep(settle)
    return psutil.Process(pid).memory_info().rss


@dataclass
class CaseResult:
    name: str
    parallel: int
    idle_mb: float
    peak_above_idle_mb: float
    seconds: float
    statuses: list[int]
    health_slowest_s: float
    health_failures: list[str] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    retry_after: list[str | None] = field(default_factory=list)


def run_case(url: str, pid: int, name: str, send: Callable[[str], object], parallel: int = 1) -> CaseResult:
    """``send(url)`` ``parallel`` times at once, with the server's RSS sampled and ``/health`` polled meanwhile."""
    base = idle_rss(pid)
    sampler, probe = RssSampler(pid), HealthProbe(url)
    sampler.start()
    probe.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        answers = list(pool.map(lambda _: send(url), range(parallel)))
    seconds = time.perf_counter() - t0
    time.sleep(0.05)
    probe.stop()
    peak = sampler.stop()
    bodies = []
    for a in answers:
        try:
            bodies.append(a.json())  # type: ignore[attr-defined]
        except ValueError:
            bodies.append({})
    return CaseResult(name, parallel, base / MB, (peak - base) / MB, seconds,
                      [a.status_code for a in answers], probe.slowest, probe.failures, bodies,  # type: ignore[attr-defined]
                      [a.headers.get("Retry-After") for a in answers])  # type: ignore[attr-defined]


def hostile_cases() -> dict[str, Callable[[str], object]]:
    """Name -> a function posting that hostile request to a server URL and returning the response."""
    import requests

    bomb, png = jpeg_bomb(), png16_bomb()

    def recognize(data: bytes, ctype: str) -> Callable[[str], object]:
        return lambda url: requests.post(url + "/recognition", data=data, headers={"Content-Type": ctype}, timeout=120)

    def enroll(url: str) -> object:
        files = [("file", (f"bomb{i}.jpg", bomb, "image/jpeg")) for i in range(ENROLL_COPIES)]
        return requests.post(url + "/api/v1/galleries/default/people/bomb/faces", files=files, timeout=120)

    return {
        "jpeg_bomb_6400x6200": recognize(bomb, "image/jpeg"),
        "png16_6300x6300": recognize(png, "image/png"),
        f"enroll_{ENROLL_COPIES}_bombs": enroll,
    }


def face_cases(photo: bytes) -> dict[str, Callable[[str], object]]:
    """Large real photos: ``photo`` upscaled 5x (over the decode budget) to recognise, and an enrollment of
    10 copies of it upscaled 4x (12 Mpx each, within the budget)."""
    import requests

    big, twelve = upscaled_jpeg(photo, 5), upscaled_jpeg(photo, 4)

    def recognize(url: str) -> object:
        return requests.post(url + "/recognition", data=big, headers={"Content-Type": "image/jpeg"}, timeout=120)

    def enroll(url: str) -> object:
        files = [("file", (f"p{i}.jpg", twelve, "image/jpeg")) for i in range(10)]
        return requests.post(url + "/api/v1/galleries/default/people/subject/faces", files=files, timeout=300)

    return {"face_photo_x5_18.8mpx": recognize, "enroll_10_photos_12mpx": enroll}


def decode_seconds(repeat: int = 5, preview_side: int | None = None) -> float:
    """Best-of-``repeat`` time of decoding the bomb JPEG in this process (the library's default budget);
    ``preview_side``: as the recognizer decodes it for detection (800, YuNet's working size)."""
    from modules.images import decode

    data = jpeg_bomb()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        decode(data, preview_side=preview_side)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel", type=int, default=8, help="requests at once in the parallel round (default 8; 1: none)")
    ap.add_argument("--threads", type=int, default=None, help="server request threads (default: app.py's)")
    ap.add_argument("--max-queued", type=int, default=None,
                    help="FACEREC_DECODE_MAX_QUEUED of the started server (default: the settings' default)")
    ap.add_argument("--decode-only", action="store_true", help="only time the bomb JPEG's decode in this process")
    ap.add_argument("--photo", type=Path, default=DEFAULT_IMAGE, help="the face photo of the large-photo cases")
    args = ap.parse_args(argv)
    bomb = jpeg_bomb()
    print(f"bomb JPEG {len(bomb)} bytes declaring {BOMB_SIZE[0]}x{BOMB_SIZE[1]}; 16-bit PNG {len(png16_bomb())} bytes")
    print(f"decode of the bomb JPEG in this process: {decode_seconds() * 1000:.0f} ms at the decode budget,"
          f" {decode_seconds(preview_side=800) * 1000:.0f} ms as detection decodes it (best of 5)")
    if args.decode_only:
        return 0
    results = []
    if args.max_queued is not None:
        os.environ["FACEREC_DECODE_MAX_QUEUED"] = str(args.max_queued)
    with tempfile.TemporaryDirectory(prefix="facerec-hostile-") as tmp:
        proc, url = start_server("waitress", tmp, None, args.threads)
        try:
            import requests

            requests.post(url + "/recognition", data=bomb, headers={"Content-Type": "image/jpeg"}, timeout=120)
            cases = hostile_cases()
            alone = {**cases, **(face_cases(args.photo.read_bytes()) if args.photo.is_file() else {})}
            for parallel in sorted({1, max(1, args.parallel)}):
                for name, send in (alone if parallel == 1 else cases).items():
                    res = run_case(url, proc.pid, name, send, parallel)
                    results.append(res)
                    print(f"{name:24s} x{parallel}: +{res.peak_above_idle_mb:7.0f} MB above idle"
                          f" ({res.idle_mb:.0f} MB), {res.seconds:6.2f} s, statuses {sorted(set(res.statuses))},"
                          f" slowest /health {res.health_slowest_s * 1000:.0f} ms", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps([{k: v for k, v in r.__dict__.items() if k != "bodies"} for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
