"""Moved to :mod:`modules.storage.jobs` (one store for SQLite and PostgreSQL); this name stays for old imports."""
from ..storage.jobs import *  # noqa: F403
from ..storage.jobs import JobStore as PostgresJobStore, JobStore as SQLiteJobStore  # noqa: F401
