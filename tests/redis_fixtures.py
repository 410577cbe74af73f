"""A throwaway Redis server and video workers for the task-queue tests.

``redis-server`` (Debian's package; ``scripts/install_redis.sh`` installs it)
is started on a free loopback port with its files in a temporary folder and no
persistence, and stopped at the end of the session.  Each test gets a Redis
database number of its own (``redis://127.0.0.1:<port>/<n>``, flushed first), so
tests never see each other's queues.  ``FACEREC_TEST_REDIS_URL`` points the tests
at an existing server instead (its databases are flushed: use a scratch one).

Under ``CI=true`` a missing ``redis-server`` fails the tests; elsewhere they are skipped.

``python -m tests.redis_fixtures`` starts one by hand: it prints the URL and runs until Ctrl-C.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_URL = "FACEREC_TEST_REDIS_URL"


class RedisUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ThrowawayRedis:
    proc: subprocess.Popen
    port: int
    base: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def start_throwaway_redis() -> ThrowawayRedis:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisUnavailable("redis-server is not installed (scripts/install_redis.sh)")
    base = Path(tempfile.mkdtemp(prefix="facerec-redis-"))
    last = ""
    for _ in range(5):  # a free port may be taken between choosing and binding it
        port = _free_port()
        log = base / f"redis-{port}.log"
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(base), "--daemonize", "no", "--logfile", str(log), "--databases", "64"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return ThrowawayRedis(proc, port, base)
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        last = log.read_text(errors="replace")[-1000:] if log.exists() else ""
    shutil.rmtree(base, ignore_errors=True)
    raise RedisUnavailable(f"redis-server did not start: {last}")


def _unavailable(msg: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Redis for the tests: {msg}")
    pytest.skip(f"Redis for the tests: {msg}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """Base URL (no database number) of the session's Redis."""
    external = os.environ.get(ENV_URL)
    if external:
        yield external.rstrip("/").rsplit("/", 1)[0] if external.count("/") > 2 else external.rstrip("/")
        return
    try:
        server = start_throwaway_redis()
    except (RedisUnavailable, OSError) as exc:
        _unavailable(str(exc))
    try:
        yield server.url
    finally:
        server.stop()


_db_numbers = itertools.count(1)


@pytest.fixture
def redis_url(redis_server) -> str:
    """``redis://.../<n>``: an empty database of this test's own."""
    from redis import Redis

    url = f"{redis_server}/{next(_db_numbers) % 64}"
    with Redis.from_url(url) as r:
        r.flushdb()
    return url


class WorkerProcess:
    """``python -m modules.worker`` in a subprocess; :meth:`kill` sends SIGKILL."""

    def __init__(self, queue_url: str, log_dir: Path, *args: str, env: dict[str, str] | None = None):
        self.log_path = Path(log_dir) / f"worker-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "modules.worker", "--queue-url", queue_url, "--log-level", "INFO", *args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.name: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 60.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            text = self.log_path.read_text(errors="replace")
            if "ready on queue" in text:
                # RQ registers (and starts listening) right after this line
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # RQ: warm shutdown, then a second one stops at once
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no cleanup of any kind
            self.proc.wait()


def wait_for_workers(queue_url: str, n: int, timeout: float = 30.0) -> None:
    """Until ``n`` RQ workers are registered on the video queue."""
    from redis import Redis
    from rq import Queue, Worker

    from modules.jobs.executors import QUEUE_NAME

    with Redis.from_url(queue_url) as r:
        q = Queue(QUEUE_NAME, connection=r)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if Worker.count(queue=q) >= n:
                return
            time.sleep(0.05)
    raise RuntimeError(f"fewer than {n} workers registered after {timeout} s")


if __name__ == "__main__":  # pragma: no cover - manual use
    srv = start_throwaway_redis()
    print(srv.url + "/0", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
