"""A throwaway PostgreSQL server with pgvector for the tests and the benchmarks.

The binaries come from the ``pgserver`` package on PyPI (PostgreSQL 16 with
pgvector 0.6.2); Debian's repositories here have no pgvector.  PostgreSQL
refuses to run as root, so when the tests run as root the server runs as the
unprivileged system user ``pgtest`` (created with ``useradd`` if missing).  The
server listens on a Unix socket in its own temporary folder only (no TCP port,
so parallel runs never collide) and is stopped and deleted at the end.

``FACEREC_TEST_DATABASE_URL`` points the tests at an existing server instead (it
needs the ``vector`` extension available and the right to create databases).

Under ``CI=true`` a server that cannot be started fails the tests; elsewhere
the PostgreSQL tests are skipped with the reason.

Run ``python -m tests.pg_fixtures`` to start one by hand: it prints the URL and
keeps the server up until Ctrl-C.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

PG_USER = "pgtest"  # the unprivileged system user the server runs as when we are root
ENV_URL = "FACEREC_TEST_DATABASE_URL"
TEST_SETTINGS = {  # a throwaway server: durability off, for speed
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
}


class PostgresUnavailable(RuntimeError):
    pass


def pgserver_bin_dir() -> Path:
    """``pgserver``'s bundled PostgreSQL binaries (found without importing the package)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresUnavailable("the 'pgserver' package is not installed (pip install pgserver==0.1.4)")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise PostgresUnavailable(f"pgserver has no PostgreSQL binaries at {bin_dir}")
    return bin_dir


def _ensure_user(name: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        proc = subprocess.run(  # noqa: PLW1510 - the return code is checked below
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
        )
        if proc.returncode not in (0, 9):  # 9: created meanwhile by another process
            raise PostgresUnavailable(f"cannot create the system user {name!r}: {proc.stderr.strip()}")
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


@dataclass
class ThrowawayPostgres:
    """A running server; ``url(dbname)`` connects as the superuser ``postgres``."""

    base: Path
    bin_dir: Path
    run_as: tuple[int, int] | None
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={quote(str(self.base), safe='')}"

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        kw = {}
        if self.run_as is not None:
            kw = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
        return subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout, cwd=self.base, **kw)

    def start(self, settings: dict[str, str] | None = None) -> None:
        init = self._run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        )
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        opts = f"-k {self.base} -h ''" + "".join(f" -c {k}={v}" for k, v in (settings or {}).items())
        ctl = self._run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.base / "log"), "-w", "-t", "60",
             "-o", opts, "start"]
        )
        if ctl.returncode != 0:
            log = (self.base / "log").read_text(errors="replace")[-2000:] if (self.base / "log").exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {ctl.stderr.strip() or ctl.stdout.strip()}\n{log}")
        # every database created from template1 gets the extension
        self.sql("template1", "CREATE EXTENSION IF NOT EXISTS vector")

    def sql(self, dbname: str, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        self.sql("postgres", f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.sql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.base, ignore_errors=True)


def start_throwaway_postgres(settings: dict[str, str] | None = None) -> ThrowawayPostgres:
    """Start a fresh server in a new folder under the system temp dir (as ``pgtest`` when root)."""
    bin_dir = pgserver_bin_dir()
    run_as = _ensure_user(PG_USER) if os.geteuid() == 0 else None
    # short path: a Unix socket path must stay under ~100 bytes
    base = Path(tempfile.mkdtemp(prefix="facerec-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    if run_as is not None:
        os.chown(base, *run_as)
    os.chmod(base, 0o700)
    server = ThrowawayPostgres(base=base, bin_dir=bin_dir, run_as=run_as)
    try:
        if run_as is not None:  # the binaries must be reachable by that user
            probe = server._run([str(bin_dir / "postgres"), "--version"])
            if probe.returncode != 0:
                raise PostgresUnavailable(
                    f"user {PG_USER!r} cannot run {bin_dir / 'postgres'} (check that its folders are o+rx):"
                    f" {probe.stderr.strip()}"
                )
        server.start(settings)
    except BaseException:
        server.stop()
        raise
    return server


def with_dbname(url: str, dbname: str) -> str:
    """``url`` (a ``postgresql://`` URL) pointing at database ``dbname`` instead."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


# --- pytest fixtures -----------------------------------------------------------------------
def _unavailable(msg: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL for the tests: {msg}")
    pytest.skip(f"PostgreSQL for the tests: {msg}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[ThrowawayPostgres | str]:
    """The session's PostgreSQL: an external URL from ``FACEREC_TEST_DATABASE_URL``, or a throwaway server."""
    external = os.environ.get(ENV_URL)
    if external:
        yield external
        return
    try:
        server = start_throwaway_postgres(TEST_SETTINGS)
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        _unavailable(str(exc))
    except Exception as exc:  # noqa: BLE001 - e.g. psycopg missing or the extension failing
        _unavailable(f"{type(exc).__name__}: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> Iterator[str]:
    """A URL of a fresh, empty database of this test's own (dropped afterwards)."""
    if isinstance(pg_server, str):  # external server: a fresh database on it
        import psycopg

        name = f"facerec_t_{os.getpid()}_{time.monotonic_ns()}"
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_dbname(pg_server, name)
        finally:
            with psycopg.connect(pg_server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


if __name__ == "__main__":  # pragma: no cover - manual use (scripts/start_test_postgres.sh)
    import signal
    import sys

    def _stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    srv = start_throwaway_postgres()
    print(srv.url(), flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        srv.stop()
        sys.stdout.flush()
