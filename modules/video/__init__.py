"""Video computing: detect, track and recognize faces over frames, draw them, read and write video.

Video jobs (queueing, workers, the HTTP side) are :mod:`modules.jobs`.  Only the config (pydantic, no model) is
imported eagerly here; the rest loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import VideoConfig, load_video_config, video_config

__all__ = ["VideoConfig", "load_video_config", "video_config", "VideoProcessor", "FrameResult", "Hooks",
           "process_video"]

_LAZY = {"VideoProcessor": ".processor", "FrameResult": ".processor", "Hooks": ".processor",
         "process_video": ".process"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
