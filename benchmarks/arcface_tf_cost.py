"""Compute cost per face of the ArcFace-TF ResNet50 embedder (configs/arc_res50.yaml).

    python -m benchmarks.arcface_tf_cost [--config configs/arc_res50.yaml] [--threads N] [--repeats N]

Weights do not change the cost, so a random-init model is saved to a temporary
checkpoint and loaded through :class:`ArcFaceTFEmbedder` exactly as in
service.  Reports the median milliseconds per face at batch 1 and batch 16,
with the config's flip averaging (two forward passes per face) and without.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _median_ms_per_face(fn, batch, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000.0 / len(batch), 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/arc_res50.yaml")
    ap.add_argument("--threads", type=int, default=None, help="TensorFlow intra-op threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per batch size (batch 1 runs 3x as many)")
    args = ap.parse_args(argv)

    if args.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    import tf_keras

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    from modules.arcface_tf.checkpoints import save_checkpoint
    from modules.arcface_tf.models import model_from_config
    from modules.config import load_config
    from modules.embedders.arcface_tf import ArcFaceTFEmbedder

    cfg = load_config(args.config)
    emb_cfg = cfg.embedder
    with tempfile.TemporaryDirectory(prefix="arcface_tf_cost_") as tmp:
        tf_keras.utils.set_random_seed(0)
        t0 = time.perf_counter()
        model = model_from_config(emb_cfg, training=False)
        build_s = time.perf_counter() - t0
        save_checkpoint(model, Path(tmp) / emb_cfg.sub_name, epoch=0, batch=0, fmt="tf",
                        meta={"note": "random init, for timing only"})
        del model
        t0 = time.perf_counter()
        embedder = ArcFaceTFEmbedder(emb_cfg.model_copy(update={"checkpoint_dir": tmp}), model_id=cfg.name)
        load_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (16, 112, 112, 3), dtype=np.uint8)
    reps = args.repeats
    result = {
        "benchmark": "arcface_tf_cost",
        "config": cfg.name,
        "backbone": emb_cfg.backbone_type,
        "input": [emb_cfg.input_size, emb_cfg.input_size, 3],
        "embd_shape": emb_cfg.embd_shape,
        "inference_batch_size": emb_cfg.batch_size,
        "flip": emb_cfg.flip,
        # embed(): as configured (flip averaging = 2 forward passes per face), preprocessing included
        "batch_1_ms_per_face": _median_ms_per_face(embedder.embed, faces[:1], reps * 3),
        "batch_16_ms_per_face": _median_ms_per_face(embedder.embed, faces, reps),
        # one forward pass per face (what flip: false costs)
        "no_flip_batch_1_ms_per_face": _median_ms_per_face(embedder._forward, faces[:1], reps * 3),
        "no_flip_batch_16_ms_per_face": _median_ms_per_face(embedder._forward, faces, reps),
        "params": int(sum(int(np.prod(w.shape)) for w in embedder._model.weights)),
        "model_build_s": round(build_s, 2),
        "embedder_load_s": round(load_s, 2),
        "intra_op_threads": args.threads or "default",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
