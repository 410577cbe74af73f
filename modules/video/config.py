"""Settings of the video pipeline (tracking, track identity, output), validated with pydantic.

Only pydantic here, so :mod:`modules.config` may import :class:`VideoConfig` without a cycle.  No similarity
thresholds: a track is named with the embedder config's open-set threshold for the gallery size, optionally
relaxed (``relaxed_delta``, ``relaxed_margin``: a ratio test only aggregated track evidence gets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError


class VideoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- detection ------------------------------------------------------------------------
    detect_every: int = Field(2, ge=1, le=30,
                              description="run the detector on every n-th frame; boxes in between are extrapolated")
    detect_max_side: int | None = Field(640, ge=64, description="frames are shrunk to this long side for detection"
                                        " (None: the embedder config's detector.max_side)")

    # --- tracking (ByteTrack / SORT / OC-SORT from the `trackers` package) ------------------------
    tracker: Literal["bytetrack", "sort", "ocsort"] = "bytetrack"
    lost_track_buffer: int = Field(15, ge=0, le=600,
                                   description="frames (at 30 fps) a lost track is kept for re-association")
    track_activation_threshold: float = Field(0.6, ge=0.0, le=1.0, description="detector score needed to start a track")
    high_conf_threshold: float = Field(0.7, ge=0.0, le=1.0,
                                       description="ByteTrack's split between high and low score detections")
    min_iou: float = Field(0.2, ge=0.0, le=1.0, description="IoU needed to associate a detection with a track")
    min_track_frames: int = Field(2, ge=1, le=30, description="consecutive detections before a track is confirmed"
                                  " (earlier frames are back-filled)")
    scene_cut_threshold: float = Field(0.3, ge=0.0, le=1.0, description="Bhattacharyya distance of colour histograms"
                                       " of consecutive frames that ends every track (0 = off)")

    embed_flip: bool | None = Field(
        False,
        description="average each embedding with its mirror image's (None: as the embedder config says for"
        " faces being identified, flip_queries);"
        " off by default for video: a track already averages several frames, and it halves the embedding cost",
    )

    # --- which faces are judged -------------------------------------------------------------
    min_face_size: int = Field(32, ge=0,
                               description="faces whose shorter box side is smaller are tracked but never recognized")
    min_det_score: float = Field(0.7, ge=0.0, le=1.0,
                                 description="detector score a face needs to be used for recognition")
    max_pose: float | None = Field(None, ge=0.0, le=2.0, description="skip faces turned further than this for"
                                   " recognition: |nose offset from the eye midpoint| / eye distance"
                                   " (0 = frontal, ~0.5 = strong three-quarter view); None = no pose filter")

    # --- track identity --------------------------------------------------------------------------
    decision: Literal["vote", "mean"] = Field(
        "mean", description="mean embedding of the samples, or a majority vote of per-frame decisions")
    recognize_frames: int = Field(5, ge=1, le=100, description="a track is named from its first N good frames")
    min_decision_frames: int = Field(2, ge=1, le=100,
                                     description="a track that ends with fewer good frames than this stays unknown")
    vote_min_share: float = Field(0.5, gt=0.0, le=1.0,
                                  description="vote: share of the samples the winning name needs (ties lose)")
    relaxed_delta: float = Field(0.06, ge=0.0, le=0.5, description="decisions on >= recognize_frames samples"
                                 " may go this far below the threshold ...")
    relaxed_margin: float = Field(0.15, ge=0.0, le=2.0,
                                  description="... when the best name beats the runner-up by at least this")
    recheck_every: int = Field(30, ge=1, le=100000,
                               description="after the decision, one good frame in K is embedded again")
    recheck_window: int = Field(5, ge=1, le=100,
                                description="samples kept per track for re-decisions of unknown tracks")
    switch_after: int = Field(3, ge=1, le=100,
                              description="consecutive contradicting re-checks before a named track changes name")
    switch_margin: float = Field(0.1, ge=0.0, le=2.0, description="a re-check only votes for another name"
                                 " that beats the current one by this")
    drop_delta: float = Field(0.15, ge=0.0, le=2.0, description="a re-check contradicts the current name"
                              " when its similarity falls this far below the threshold")
    lookahead_frames: int | None = Field(
        None, ge=0, le=300,
        description="frames held back before output so a track's decision also labels its first frames"
        " (None: (recognize_frames + min_track_frames) x detect_every for files, detect_every for cameras)",
    )

    # --- output -----------------------------------------------------------------------------------
    write_video: bool = True
    video_codec: str = Field("h264", min_length=4, max_length=4, pattern=r"^[0-9A-Za-z ]{4}$",
                             description="annotated video codec: h264 (PyAV/libx264, plays in browsers)"
                             " or an OpenCV FOURCC such as mp4v")
    save_crops: bool = Field(True, description="best crop of every named track under OUT_DIR/<name>/")
    save_unknown_crops: bool = Field(False,
                                     description="also keep the best crop of unknown tracks under OUT_DIR/unknown/")
    crop_margin: float = Field(0.25, ge=0.0, le=2.0, description="crops extend the box by this share of its size")
    jpeg_quality: int = Field(90, ge=10, le=100)

    def lookahead_for(self, live: bool) -> int:
        if self.lookahead_frames is not None:
            return self.lookahead_frames
        return self.detect_every if live else (self.recognize_frames + self.min_track_frames) * self.detect_every


def _format(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc or '<root>'}: {msg}")
    return f"invalid video settings{where}: " + "; ".join(parts)


def video_config(values: dict[str, Any] | None = None, base: VideoConfig | None = None, where: str = "") -> VideoConfig:
    """``base`` (default: the defaults) updated with ``values``; :class:`ConfigError` names a bad key."""
    try:
        return VideoConfig.model_validate({**(base.model_dump() if base is not None else {}), **(values or {})})
    except ValidationError as exc:
        raise ConfigError(_format(exc, where)) from exc


def load_video_config(path: str | Path | None) -> VideoConfig:
    """A YAML file holding either the settings or a ``video:`` section; ``None`` -> defaults."""
    if path is None:
        return VideoConfig()
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read video config {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"video config {p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"video config {p} must be a mapping")
    if "video" in raw and isinstance(raw["video"], dict):
        raw = raw["video"]
    return video_config(raw, where=f" in {p}")
