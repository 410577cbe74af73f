"""Video computing: detect, track and recognize faces over frames, draw them, read and write video.

* :mod:`.config`: :class:`VideoConfig` (pydantic; importable without loading any model)
* :mod:`.tracking`: the ``trackers`` package's ByteTrack/SORT/OC-SORT behind a small adapter, shot cuts
* :mod:`.identity`: per-track identity (first N good frames, vote or mean, re-checks, no lightly flipped names)
* :mod:`.processor`: :class:`VideoProcessor` (frame by frame, results to :class:`Hooks`)
* :mod:`.process`: :func:`process_video` (file or camera -> files); :mod:`.ranges`: one frame range, segments
* :mod:`.annotate`, :mod:`.io`: drawing, threaded reading and writing
* :mod:`.cli`: what ``test_frame.py`` runs

Video jobs (queueing, workers, the HTTP side) are :mod:`modules.jobs`; only the config is
imported eagerly here, the rest loads on first use.
"""

from __future__ import annotations

from typing import Any

from .config import VideoConfig, load_video_config, video_config

__all__ = ["VideoConfig", "load_video_config", "video_config", "VideoProcessor", "FrameResult", "Hooks",
           "process_video"]

_LAZY = {"VideoProcessor": ".processor", "FrameResult": ".processor", "Hooks": ".processor",
         "process_video": ".process"}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod, __name__), name)
