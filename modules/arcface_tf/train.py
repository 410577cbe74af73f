"""Training the arcface-tf2 model on an image folder (``train.py`` at the repository root is the CLI).

Mirrors arcface-tf2's ``train.py`` (its ``eager_tf`` mode, as a compiled
``tf.function`` step): ``ArcFaceModel(training=True)``, SGD with momentum 0.9
(Nesterov) at ``train.base_lr``, loss = ``SoftmaxLoss`` + the L2
regularisation losses, checkpoints ``e_<epoch>_b_<batch>.ckpt`` in
``<checkpoint_dir>/<sub_name>/`` every ``train.save_steps`` steps and at the
end, and -- like arcface-tf2 -- training resumes from the latest checkpoint
there (weights only; the momentum restarts) unless ``resume=False``.

The dataset is a folder ``<person>/<image>``.  With ``align=True`` every image
goes through YuNet + the 5-point aligner (images without a face are skipped
and counted) and the crops are held in memory (37 KB per face); otherwise the
images must already be 112x112 aligned crops and are decoded on the fly.
Inputs are RGB float in [0, 1] with random horizontal flips.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ArcFaceTFConfig, Config, TrainConfig, load_config
from ..errors import ConfigError, FaceRecError, InvalidRequestError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
INPUT_SIZE = 112


class DatasetError(InvalidRequestError):
    """The training image folder is missing, empty or has too few people."""

    code = "bad_dataset"


# --- data -----------------------------------------------------------------------
@dataclass
class FaceDataset:
    """Labelled training faces: either in-memory RGB crops (``images``) or 112x112 files (``paths``)."""

    root: Path
    class_names: list[str]
    labels: np.ndarray  # (N,) int32, index into class_names
    images: np.ndarray | None = None  # (N, 112, 112, 3) RGB uint8
    paths: list[str] | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def scan_dataset(root: str | Path, min_images_per_person: int = 1) -> tuple[list[str], list[list[Path]]]:
    """People (sorted folder names) with at least ``min_images_per_person`` images, and their files."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset directory not found: {root.absolute()}")
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a directory: {root.absolute()}")
    people: list[tuple[str, list[Path]]] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        if files:
            people.append((d.name, files))
    if not people:
        raise DatasetError(
            f"dataset directory {root.absolute()} holds no images; expected <person>/<image> "
            f"({', '.join(IMAGE_EXTENSIONS)})"
        )
    kept = [(n, f) for n, f in people if len(f) >= min_images_per_person]
    if len(kept) < len(people):
        log.info("dropped %d people with fewer than %d images", len(people) - len(kept), min_images_per_person)
    _require_two_people(root, len(kept), min_images_per_person)
    return [n for n, _ in kept], [f for _, f in kept]


def _require_two_people(root: Path, n: int, min_images: int, what: str = "images") -> None:
    if n < 2:
        raise DatasetError(
            f"dataset {root.absolute()} has {n} person folder(s) with at least {min_images} {what}; "
            "training needs at least 2 people"
        )


def align_images(
    files: Sequence[Path], detector=None, aligner=None, progress: bool = False
) -> tuple[list[np.ndarray | None], dict[str, int]]:
    """Detect the largest face of each image and align it; None where no face (or unreadable)."""
    from ..alignment import Aligner
    from ..detection import YuNetDetector
    from ..images import read_image

    detector = detector or YuNetDetector()
    aligner = aligner or Aligner()
    out: list[np.ndarray | None] = []
    stats = {"images": len(files), "aligned": 0, "no_face": 0, "unreadable": 0}
    for f in _progress(files, progress, desc="align", unit="img"):
        try:
            img = read_image(f)
        except FaceRecError as exc:
            log.warning("skipping unreadable image %s: %s", f, exc.message)
            stats["unreadable"] += 1
            out.append(None)
            continue
        faces = detector.detect(img)
        if not faces:
            stats["no_face"] += 1
            out.append(None)
            continue
        out.append(aligner.align(img, faces[0].landmarks))
        stats["aligned"] += 1
    return out, stats


def load_dataset(
    root: str | Path,
    *,
    align: bool = False,
    min_images_per_person: int = 1,
    detector=None,
    progress: bool = False,
    save_aligned: str | Path | None = None,
) -> FaceDataset:
    """Scan (and with ``align``, detect + align) a ``<person>/<image>`` folder."""
    root = Path(root)
    names, files = scan_dataset(root, min_images_per_person)
    if not align:
        return _load_prealigned(root, names, files, progress)

    flat = [f for fs in files for f in fs]
    crops, stats = align_images(flat, detector=detector, progress=progress)
    log.info(
        "aligned %d of %d images (%d without a face, %d unreadable)",
        stats["aligned"], stats["images"], stats["no_face"], stats["unreadable"],
    )
    per_person: list[list[np.ndarray]] = []
    i = 0
    for fs in files:
        per_person.append([c for c in crops[i : i + len(fs)] if c is not None])
        i += len(fs)
    kept = [(n, c) for n, c in zip(names, per_person) if len(c) >= min_images_per_person]
    stats["people"] = len(kept)
    _require_two_people(root, len(kept), min_images_per_person, "detected faces")
    if save_aligned is not None:
        _save_crops(Path(save_aligned), kept)
    images = np.stack([c[..., ::-1] for _, cs in kept for c in cs])  # BGR -> RGB
    labels = np.concatenate([np.full(len(cs), k, np.int32) for k, (_, cs) in enumerate(kept)])
    stats["faces"] = len(labels)
    return FaceDataset(root, [n for n, _ in kept], labels, images=np.ascontiguousarray(images), stats=stats)


def _save_crops(out: Path, kept: list[tuple[str, list[np.ndarray]]]) -> None:
    import cv2

    for name, crops in kept:
        (out / name).mkdir(parents=True, exist_ok=True)
        for j, c in enumerate(crops):
            cv2.imwrite(str(out / name / f"{name}_{j + 1:04d}.png"), c)
    log.info("wrote aligned crops to %s", out)


def _load_prealigned(root: Path, names: list[str], files: list[list[Path]], progress: bool) -> FaceDataset:
    from PIL import Image, UnidentifiedImageError

    paths, labels = [], []
    for k, fs in enumerate(files):
        for f in fs:
            paths.append(f)
            labels.append(k)
    for f in _progress(paths, progress, desc="check sizes", unit="img"):
        try:
            with Image.open(f) as im:
                size = im.size
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"cannot read training image {f}: {exc}") from exc
        if size != (INPUT_SIZE, INPUT_SIZE):
            raise DatasetError(
                f"training image {f} is {size[0]}x{size[1]}; without --align every image must be a "
                f"{INPUT_SIZE}x{INPUT_SIZE} aligned face crop (pass --align to detect and align faces)"
            )
    stats = {"images": len(paths), "faces": len(paths), "people": len(names)}
    return FaceDataset(root, names, np.asarray(labels, np.int32), paths=[str(p) for p in paths], stats=stats)


def make_tf_dataset(data: FaceDataset, batch_size: int, seed: int = 0, flip: bool = True):
    """Endless, shuffled ``((image, label), label)`` batches: RGB float32 in [0, 1], random h-flips."""
    import tensorflow as tf

    n = len(data)
    labels_t = tf.constant(data.labels.astype(np.float32))
    if data.images is not None:
        images = data.images  # read through numpy_function: no 2 GB graph-constant limit

        def load(i):
            img = tf.numpy_function(lambda j: images[j], [i], tf.uint8, stateful=False)
            return tf.ensure_shape(img, [INPUT_SIZE, INPUT_SIZE, 3])

    else:
        paths_t = tf.constant(data.paths)

        def load(i):
            img = tf.io.decode_image(tf.io.read_file(paths_t[i]), channels=3, expand_animations=False)
            return tf.ensure_shape(img, [INPUT_SIZE, INPUT_SIZE, 3])

    def example(counter, i):
        img = tf.cast(load(i), tf.float32) / 255.0
        if flip:
            img = tf.image.stateless_random_flip_left_right(img, seed=tf.stack([tf.cast(seed, tf.int64), counter]))
        label = tf.gather(labels_t, i)
        return (img, label), label

    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


# --- training -------------------------------------------------------------------
@dataclass
class TrainResult:
    model: Any  # the tf_keras training model, (input_image, label) -> logits
    losses: list[float]  # total loss of every step run
    checkpoints: list[Any]  # CheckpointRef of every save, in order
    num_classes: int
    class_names: list[str]
    start_step: int
    last_step: int
    steps_per_epoch: int
    checkpoint_dir: Path

    def embedding_model(self):
        from .models import embedding_model

        return embedding_model(self.model)


def _progress(it, enabled: bool, **kw):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, **kw)


def _arcface_config(config: Config) -> ArcFaceTFConfig:
    if not isinstance(config.embedder, ArcFaceTFConfig):
        raise ConfigError(f"config {config.name!r} has embedder type {config.embedder.type!r}; only arcface_tf trains")
    return config.embedder


def train(
    config: Config,
    data: FaceDataset,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    checkpoint_dir: str | Path | None = None,
    fmt: str = "tf",
    resume: bool = True,
    seed: int | None = None,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``config``'s model on ``data``; returns the model, per-step losses and the checkpoints saved."""
    import tensorflow as tf
    import tf_keras

    from .checkpoints import FORMATS, checkpoint_dir_for, latest_checkpoint, load_weights, save_checkpoint
    from .losses import SoftmaxLoss
    from .models import model_from_config

    emb = _arcface_config(config)
    tcfg = config.train or TrainConfig()
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    epochs = epochs or tcfg.epochs
    batch_size = batch_size or tcfg.batch_size
    seed = tcfg.seed if seed is None else seed
    if len(data) < batch_size:
        raise DatasetError(
            f"dataset {data.root} has {len(data)} faces, fewer than one batch of {batch_size} "
            "(use a smaller --batch-size)"
        )
    steps_per_epoch = steps_per_epoch or max(1, len(data) // batch_size)
    num_classes = emb.num_classes or data.num_classes
    if num_classes < data.num_classes:
        raise DatasetError(f"config num_classes={num_classes} but the dataset has {data.num_classes} people")
    out_dir = checkpoint_dir_for(emb, checkpoint_dir)

    tf_keras.utils.set_random_seed(seed)
    model = model_from_config(emb, training=True, num_classes=num_classes)

    # arcface-tf2: resume from the latest checkpoint in checkpoints/<sub_name>, weights only
    epoch, start_step = 1, 1
    ref = latest_checkpoint(out_dir) if resume else None
    if ref is not None:
        log.info("[*] load ckpt from %s (weights only: the optimizer's momentum restarts)", ref.path)
        try:
            load_weights(model, ref, partial=True, config=emb)
        except ConfigError as exc:
            raise ConfigError(
                f"cannot resume: {exc.message} (train from scratch with --from-scratch / resume=False, "
                "or write to another --checkpoint-dir)"
            ) from exc
        eb = ref.epoch_batch
        if eb is not None:
            start_step = (eb[0] - 1) * steps_per_epoch + eb[1] + 1  # arcface-tf2's get_ckpt_inf
    else:
        log.info("[*] training from scratch.")

    optimizer = tf_keras.optimizers.legacy.SGD(learning_rate=tcfg.base_lr, momentum=0.9, nesterov=True)
    loss_fn = SoftmaxLoss()
    model.compile(optimizer=optimizer, loss=loss_fn)  # attaches the optimizer: TF checkpoints hold its slots

    @tf.function(reduce_retracing=True)
    def train_step(inputs, labels):
        with tf.GradientTape() as tape:
            logist = model(inputs, training=True)
            reg_loss = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
            pred_loss = loss_fn(labels, logist)
            total_loss = pred_loss + reg_loss
        grads = tape.gradient(total_loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total_loss, pred_loss, reg_loss

    meta = {
        "config": config.name,
        "sub_name": emb.sub_name,
        "backbone_type": emb.backbone_type,
        "head_type": emb.head_type,
        "embd_shape": emb.embd_shape,
        "input_size": emb.input_size,
        "num_classes": num_classes,
        "dataset_people": data.num_classes,
        "dataset_faces": len(data),
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
    }
    total_steps = epochs * steps_per_epoch
    losses: list[float] = []
    saved: list[Any] = []
    result = TrainResult(model, losses, saved, num_classes, list(data.class_names), start_step, start_step - 1,
                         steps_per_epoch, out_dir)
    if start_step > total_steps:
        log.info("checkpoint %s is already at step %d of %d; nothing to train", ref.path, start_step - 1, total_steps)
        return result

    def save(step: int) -> None:
        epoch, batch = (step - 1) // steps_per_epoch + 1, (step - 1) % steps_per_epoch + 1
        ref = save_checkpoint(model, out_dir, epoch=epoch, batch=batch, fmt=fmt, meta={**meta, "step": step})
        saved.append(ref)
        log.info("[*] saved %s", ref.path)

    log.info(
        "training %s (%s/%s) on %d faces of %d people: %d epochs x %d steps of %d, from step %d",
        emb.sub_name, emb.backbone_type, emb.head_type, len(data), data.num_classes, epochs, steps_per_epoch,
        batch_size, start_step,
    )
    batches = iter(make_tf_dataset(data, batch_size, seed=seed))
    bar = _progress(range(start_step, total_steps + 1), progress, desc="train", unit="step", initial=start_step - 1,
                    total=total_steps)
    t0 = time.perf_counter()
    step = start_step - 1
    for step in bar:
        inputs, labels = next(batches)
        total_loss, pred_loss, reg_loss = train_step(inputs, labels)
        loss = float(total_loss)
        losses.append(loss)
        if progress:
            epoch = (step - 1) // steps_per_epoch + 1
            bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{loss:.3f}", pred=f"{float(pred_loss):.3f}")
        if on_step is not None:
            on_step(step, loss)
        if not np.isfinite(loss):
            raise FaceRecError(f"training diverged at step {step} (loss {loss}); lower train.base_lr")
        if step % tcfg.save_steps == 0:
            save(step)
    if not saved or saved[-1].meta.get("step") != step:
        save(step)
    result.last_step = step
    log.info("[*] training done: %d steps in %.1f s", len(losses), time.perf_counter() - t0)
    return result


def main(
    *,
    config: str,
    dataset: str,
    align: bool = False,
    epochs: int | None = None,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    checkpoint_dir: str | None = None,
    format: str = "tf",  # noqa: A002 - the CLI option's name
    from_scratch: bool = False,
    save_aligned: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> int:
    """The CLI behind ``train.py``: 0 on success, 2 with a one-line message on a bad config or dataset."""
    import sys

    # log lines go to stdout; stderr carries the progress bars and, on failure, the one-line error
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        cfg = load_config(config)
        _arcface_config(cfg)
        tcfg = cfg.train or TrainConfig()
        data = load_dataset(
            dataset, align=align, min_images_per_person=tcfg.min_images_per_person, progress=progress,
            save_aligned=save_aligned,
        )
        log.info("dataset %s: %d faces of %d people %s", dataset, len(data), data.num_classes, data.stats)
        if threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        result = train(
            cfg, data, epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
            checkpoint_dir=checkpoint_dir, fmt=format, resume=not from_scratch, progress=progress,
        )
    except FaceRecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if result.checkpoints:
        print(f"saved {result.checkpoints[-1].path} ({result.checkpoints[-1].format})")
    return 0
