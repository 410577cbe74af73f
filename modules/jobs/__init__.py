"""Video jobs: accept, run (in this process or on RQ workers), follow and serve them.

* :mod:`.manager`: :class:`JobManager`, what the HTTP API talks to; :class:`JobLimits`
* :mod:`.tasks`: the tasks of a job and the plan that orders them
* :mod:`.executors`: who runs the tasks (a thread pool here, or RQ on Redis)
* :mod:`.chunks`: long videos in chunks (:class:`ChunkPolicy`, joining tracks across borders)
* :mod:`.stream`: MJPEG of a running or finished job
* :mod:`.recovery`: after a restart (dead in-process jobs, job folders of earlier versions)
* :mod:`.worker`: ``python -m modules.worker``

The computing itself (decoding, tracking, naming, drawing) is :mod:`modules.video`.
"""

from .chunks import ChunkPolicy
from .manager import JobLimits, JobManager, JobNotReadyError, run_job
from .recovery import validate_job_id
from .stream import MJPEG_MIMETYPE

__all__ = ["MJPEG_MIMETYPE", "ChunkPolicy", "JobLimits", "JobManager", "JobNotReadyError", "run_job", "validate_job_id"]
