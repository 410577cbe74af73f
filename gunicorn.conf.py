"""gunicorn settings for the face recognition API.

    gunicorn -c gunicorn.conf.py                 # serves app:app on 127.0.0.1:5000
    FACEREC_BIND=0.0.0.0:8000 FACEREC_WORKERS=4 FACEREC_DATA_DIR=/srv/facerec gunicorn -c gunicorn.conf.py

Each worker imports ``app`` itself (``preload_app`` off) and so loads the
models once, after the fork: no model or SQLite connection is shared across
processes.  Every worker opens the same gallery database; a write bumps its
generation, so an enrollment made in one worker is seen by the next search in
any other.  The workers are gthread workers that give a thread only complete
request heads (``modules/server/gthread.py``), so slow or idle clients cannot
take the threads.  Everything is set with ``FACEREC_*`` variables (bind,
workers, threads, timeouts, connection and stream limits: ``ServerSettings``
in modules/settings.py; the values: ``modules.server.gunicorn_options``;
docs/serving.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # modules/ beside this file
from modules.server import gunicorn_options, prepare_process
from modules.settings import load_settings

_settings = load_settings()  # a bad FACEREC_* value stops gunicorn, naming it
globals().update(gunicorn_options(_settings))


def child_exit(server, worker):  # prometheus-client multiprocess mode (docs/operations.md)
    __import__("modules.api.metrics", fromlist=["child_exit"]).child_exit(server, worker)


def post_fork(server, worker):  # gunicorn hook signature
    # before the worker loads the models: each computation's threads, the cores shared among every thread
    prepare_process(_settings, _settings.server.worker_count)
