"""``python -m modules.worker``: a video job worker on Redis (see :mod:`modules.jobs.worker`)."""
import sys

from .jobs.worker import main

if __name__ == "__main__":
    sys.exit(main())
