"""gunicorn settings for the face recognition API.

    gunicorn -c gunicorn.conf.py                 # serves app:app on 127.0.0.1:5000
    FACEREC_BIND=0.0.0.0:8000 FACEREC_WORKERS=4 FACEREC_DATA_DIR=/srv/facerec gunicorn -c gunicorn.conf.py

Each worker imports ``app`` itself (``preload_app`` off) and so loads the
models once, after the fork: no model or SQLite connection is shared across
processes.  Every worker opens the same gallery database; a write bumps its
generation, so an enrollment made in one worker is seen by the next search in
any other.  The app itself is configured with ``FACEREC_*`` variables
(``FACEREC_DATA_DIR``, ``FACEREC_CONFIG``, ``FACEREC_API_KEYS``,
``FACEREC_MAX_UPLOAD_BYTES``, ``FACEREC_MAX_PIXELS``; see modules/api/settings.py).
"""
import os

_cores = os.cpu_count() or 1

wsgi_app = "app:app"
bind = os.environ.get("FACEREC_BIND", "127.0.0.1:5000")
# CPU-bound inference: one process per core, a few threads each to overlap decoding, I/O and the two models
workers = int(os.environ.get("FACEREC_WORKERS", str(max(1, _cores))))
worker_class = "gthread"
threads = int(os.environ.get("FACEREC_THREADS", "4"))
preload_app = False
# the control socket is one file per user ($HOME/.gunicorn/gunicorn.ctl): several instances would collide
control_socket_disable = True
timeout = int(os.environ.get("FACEREC_TIMEOUT", "120"))  # a large re-embed may take a while
graceful_timeout = 30
keepalive = 5
# header limits (the body limit is Flask's MAX_CONTENT_LENGTH, answered as JSON 413)
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = os.environ.get("FACEREC_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("FACEREC_LOG_LEVEL", "info")
# OpenCV's own thread pool per worker: the cores shared out, so workers do not fight over them
_cv_threads = int(os.environ.get("FACEREC_CV_THREADS", str(max(1, _cores // max(1, workers)))))


def post_worker_init(worker):  # noqa: ARG001 - gunicorn hook signature
    import cv2

    cv2.setNumThreads(_cv_threads)
