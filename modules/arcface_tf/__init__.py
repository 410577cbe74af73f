"""ArcFace on TensorFlow/tf_keras, compatible with peteryuX/arcface-tf2.

* :mod:`.models` -- ``ArcFaceModel`` (ResNet50/MobileNetV2 backbone, OutputLayer, ArcHead/NormHead)
* :mod:`.layers` -- arcface-tf2's frozen-aware ``BatchNormalization`` and ``ArcMarginPenaltyLogists``
* :mod:`.losses` -- ``SoftmaxLoss``
* :mod:`.checkpoints` -- find / load / save checkpoints (arcface-tf2 ``.ckpt`` and ``.weights.h5`` + JSON)
* :mod:`.train` -- ``train()``: training on a ``<person>/<image>`` folder (CLI: ``train.py`` at the repository root)

Importing this package does not import TensorFlow; the names below are loaded on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ArcFaceModel": "models",
    "model_from_config": "models",
    "embedding_model": "models",
    "SoftmaxLoss": "losses",
    "CheckpointRef": "checkpoints",
    "find_checkpoint": "checkpoints",
    "latest_checkpoint": "checkpoints",
    "load_inference_model": "checkpoints",
    "save_checkpoint": "checkpoints",
    "DatasetError": "train",
    "load_dataset": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
