"""gunicorn settings for the face recognition API.

    gunicorn -c gunicorn.conf.py                 # serves app:app on 127.0.0.1:5000
    FACEREC_BIND=0.0.0.0:8000 FACEREC_WORKERS=4 FACEREC_DATA_DIR=/srv/facerec gunicorn -c gunicorn.conf.py

Each worker imports ``app`` itself (``preload_app`` off) and so loads the
models once, after the fork: no model or SQLite connection is shared across
processes.  Every worker opens the same gallery database; a write bumps its
generation, so an enrollment made in one worker is seen by the next search in
any other.  The app itself is configured with ``FACEREC_*`` variables
(``FACEREC_DATA_DIR``, ``FACEREC_CONFIG``, ``FACEREC_API_KEYS``,
``FACEREC_MAX_UPLOAD_BYTES``, ``FACEREC_MAX_PIXELS``; see modules/settings.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # modules/ beside this file
from modules.settings import load_settings  # noqa: E402

_server = load_settings().server  # FACEREC_BIND, FACEREC_WORKERS, ... (a bad value stops gunicorn, naming it)

wsgi_app = "app:app"
bind = _server.bind
# CPU-bound inference: one process per core, a few threads each to overlap decoding, I/O and the two models
workers = _server.worker_count
worker_class = "gthread"
threads = _server.threads
preload_app = False
# the control socket is one file per user ($HOME/.gunicorn/gunicorn.ctl): several instances would collide
control_socket_disable = True
timeout = _server.timeout  # a large re-embed may take a while
graceful_timeout = 30
keepalive = 5
# header limits (the body limit is Flask's MAX_CONTENT_LENGTH, answered as JSON 413)
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = _server.access_log
errorlog = "-"
loglevel = _server.log_level


def post_worker_init(worker):  # noqa: ARG001 - gunicorn hook signature
    import cv2

    # OpenCV's own thread pool per worker: the cores shared out, so workers do not fight over them
    cv2.setNumThreads(_server.opencv_threads)
