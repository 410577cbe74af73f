"""The face recognition HTTP service.

    python app.py [--host 127.0.0.1] [--port 5000] [--data-dir ./data] [--config configs/sface.yaml] [--api-keys]
                  [--database-url postgresql://...] [--queue-url redis://...] [--storage-dir /shared/jobs]

serves with waitress (a production WSGI server, threads share one copy of
the models; slow clients, idle connections and long streams cannot take every
thread, see docs/serving.md).  Video jobs run inside this process unless ``--queue-url`` (or
``QUEUE_URL``) names a Redis server: then ``python -m modules.worker
--queue-url ...`` processes, on any machines, run them (see docs/queue.md).
``app`` is also exposed for other servers, configured with ``FACEREC_*``
environment variables (see ``modules/settings.py``):

    gunicorn -c gunicorn.conf.py app:app      # several worker processes
    flask --app app run                       # development

The API is described at ``/openapi.json`` and browsable at ``/docs``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from modules.errors import FaceRecError
from modules.files import private_umask
from modules.server import create_waitress, prepare_process, serving_settings
from modules.settings import load_settings
from modules.web import create_app

_app: Any = None


def __getattr__(name: str) -> Any:
    """``app`` / ``application``, built on first access (so ``python app.py`` does not build it twice)."""
    global _app
    if name in ("app", "application"):
        if _app is None:
            private_umask()  # gallery, keys, video jobs: this user's only
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            _app = create_app(serving_settings(load_settings()))
        return _app
    raise AttributeError(name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Serve the face recognition API.")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=5000, help="port (default 5000; 0 picks a free one)")
    ap.add_argument("--data-dir", default=None, help="holds the gallery database and job files (default ./data)")
    ap.add_argument("--config", default=None, help="embedder config (default configs/sface.yaml)")
    ap.add_argument("--api-keys", action="store_true", default=None,
                    help="require X-API-Key (python -m modules.api.keys create ...)")
    ap.add_argument("--database-url", default=None,
                    help="gallery (and video job) database, e.g. postgresql://... (default: $DATABASE_URL,"
                         " else SQLite in the data dir)")
    ap.add_argument("--queue-url", default=None,
                    help="run video jobs on `python -m modules.worker` processes through this Redis"
                         " (redis://host:6379/0; default: $QUEUE_URL; unset: in this process)")
    ap.add_argument("--storage-dir", default=None,
                    help="video job files, shared with the workers (default <data-dir>/jobs)")
    ap.add_argument("--chunk-seconds", type=float, default=None,
                    help="split videos at least twice this long into chunks of about this length (default 60; 0 = never)")
    ap.add_argument("--max-upload-bytes", type=int, default=None,
                    help="largest image file (default 20 MB; a request body may be 4/3 of it, for base64 JSON)")
    ap.add_argument("--max-pixels", type=int, default=None, help="largest decoded image, in pixels (default 40 Mpx)")
    ap.add_argument("--threads", type=int, default=None, help="request threads (default: $FACEREC_THREADS, else 8)")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    private_umask()  # gallery, keys, video jobs: this user's only
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(
            data_dir=args.data_dir,
            config=args.config,
            api_keys=args.api_keys,
            max_upload_bytes=args.max_upload_bytes,
            max_pixels=args.max_pixels,
            gallery_url=args.database_url,
            queue_url=args.queue_url,
            storage_dir=args.storage_dir,
            video_chunk_seconds=args.chunk_seconds,
        )
        if args.threads is not None:
            settings = settings.replace(server=settings.server.model_copy(update={"threads": max(1, args.threads)}))
        prepare_process(settings)
        application = create_app(serving_settings(settings))
    except FaceRecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    server = create_waitress(application, settings, args.host, args.port)
    print(f"serving on http://{args.host}:{server.port}", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
