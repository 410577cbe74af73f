"""Video jobs: accept, run (in this process or on RQ workers), follow and serve them (the modules: docs/queue.md).

The computing itself (decoding, tracking, naming, drawing) is :mod:`modules.video`.
"""

from .chunks import ChunkPolicy
from .manager import JobLimits, JobManager, JobNotReadyError, run_job
from .recovery import validate_job_id
from .stream import MJPEG_MIMETYPE

__all__ = ["MJPEG_MIMETYPE", "ChunkPolicy", "JobLimits", "JobManager", "JobNotReadyError", "run_job", "validate_job_id"]
