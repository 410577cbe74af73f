#!/usr/bin/env python
"""Train the ArcFace-TF model (arcface-tf2's ResNet50/MobileNetV2 + ArcHead) on an image folder.

    python train.py --config configs/arc_res50.yaml --dataset DIR [--align] [--epochs N]
                    [--batch-size N] [--steps-per-epoch N] [--checkpoint-dir DIR] [--format tf|h5]

DIR holds one folder per person with that person's images.  With --align every
image is run through the YuNet detector and 5-point aligner (images without a
face are skipped and counted); without it the images must be 112x112 aligned
crops.  Checkpoints go to <checkpoint-dir>/<sub_name>/e_<epoch>_b_<batch>.ckpt
(arcface-tf2's TF format; --format h5 writes .weights.h5 + .json instead).
Training resumes from the latest checkpoint there, as in arcface-tf2, unless
--from-scratch.  A bad config or dataset exits with status 2 and one line.
The work is done by modules.arcface_tf.train.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="YAML config with an arcface_tf embedder (configs/arc_res50.yaml)")
    p.add_argument("--dataset", required=True, help="folder of <person>/<image> files")
    p.add_argument("--align", action="store_true", help="detect and align faces (else: 112x112 aligned crops)")
    p.add_argument("--epochs", type=_positive_int, help="default: train.epochs of the config")
    p.add_argument("--batch-size", type=_positive_int, help="default: train.batch_size of the config")
    p.add_argument("--steps-per-epoch", type=_positive_int, help="default: faces // batch size")
    p.add_argument("--checkpoint-dir", help="default: embedder.checkpoint_dir of the config (checkpoints/)")
    p.add_argument(
        "--format", choices=("tf", "h5"), default="tf", help="tf: arcface-tf2 .ckpt (default); h5: .weights.h5 + .json"
    )
    p.add_argument("--from-scratch", action="store_true", help="ignore checkpoints already in the output folder")
    p.add_argument(
        "--save-aligned", metavar="DIR", help="with --align: also write the aligned crops here (reusable without --align)"
    )
    p.add_argument("--threads", type=_positive_int, help="TensorFlow intra-op threads (default: all cores)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from modules.arcface_tf.train import main as train_main

    return train_main(**vars(args))


if __name__ == "__main__":
    sys.exit(main())
