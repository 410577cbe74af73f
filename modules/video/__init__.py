"""Video: detect, track and recognize faces over frames; batch jobs for the HTTP service.

* :mod:`.config`: :class:`VideoConfig` (pydantic; importable without loading any model)
* :mod:`.tracking`: the ``trackers`` package's ByteTrack/SORT/OC-SORT behind a small adapter, shot cuts
* :mod:`.identity`: per-track identity (first N good frames, vote or mean, re-checks, no lightly flipped names)
* :mod:`.pipeline`: :class:`VideoProcessor` (frame by frame) and :func:`process_video` (file or camera -> files)
* :mod:`.annotate`, :mod:`.io`: drawing, threaded OpenCV reading and writing
* :mod:`.jobs`: the job manager behind ``/api/v1/videos`` (bounded pool, on-disk state, MJPEG)

Only the config is imported eagerly; the rest loads on first use.
"""

from __future__ import annotations

from typing import Any

from .config import VideoConfig, load_video_config, video_config

__all__ = [
    "VideoConfig",
    "load_video_config",
    "video_config",
    "VideoProcessor",
    "FrameResult",
    "process_video",
    "JobManager",
    "JobLimits",
    "run_job",
]

_LAZY = {
    "VideoProcessor": ".pipeline",
    "FrameResult": ".pipeline",
    "process_video": ".pipeline",
    "JobManager": ".jobs",
    "JobLimits": ".jobs",
    "run_job": ".jobs",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod, __name__), name)
