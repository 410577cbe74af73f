"""Face embedders behind one interface, chosen by the ``embedder.type`` of a YAML config."""
from __future__ import annotations

from ..config import ArcFaceTFConfig, Config, OnnxArcFaceConfig, SFaceConfig
from .base import Embedder, l2_normalize

__all__ = ["Embedder", "build_embedder", "l2_normalize"]


def build_embedder(config: Config) -> Embedder:
    """Load the embedder a config names (weights are loaded once, here)."""
    e = config.embedder
    if isinstance(e, SFaceConfig):
        from .sface import SFaceEmbedder

        return SFaceEmbedder(e, model_id=config.name)
    if isinstance(e, OnnxArcFaceConfig):
        from .insightface_onnx import InsightFaceOnnxEmbedder

        return InsightFaceOnnxEmbedder(e, model_id=config.name)
    if isinstance(e, ArcFaceTFConfig):
        from .arcface_tf import ArcFaceTFEmbedder

        return ArcFaceTFEmbedder(e, model_id=config.name)
    raise TypeError(f"unsupported embedder config {type(e).__name__}")  # pragma: no cover
