"""``python -m modules.worker``: a video job worker on Redis (see :mod:`modules.jobs.worker`)."""
import sys

from .jobs.worker import main, queue_url_from_env  # noqa: F401 - queue_url_from_env: app.py reads it here

if __name__ == "__main__":
    sys.exit(main())
