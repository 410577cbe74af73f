"""Finding, loading and saving ArcFace-TF checkpoints.

Layout: ``<checkpoint_dir>/<sub_name>/`` (``checkpoints/arc_res50/`` by default)
holds checkpoints in either of two formats:

``tf`` -- arcface-tf2's own format (TF object-graph checkpoint written by
    ``model.save_weights('e_<epoch>_b_<batch>.ckpt')``)::

        checkpoint                              # text index; names the latest
        e_5_b_40000.ckpt.index
        e_5_b_40000.ckpt.data-00000-of-00001

``h5`` -- Keras HDF5 weights plus a JSON sidecar::

        e_5_b_40000.weights.h5
        e_5_b_40000.weights.json                # epoch, step, num_classes, head, backbone, config name

Either format may hold a training model (with its ArcHead/NormHead) or an
inference model; both load into the inference model and give identical
embeddings.  Nothing is ever downloaded.

Which checkpoint: the config's ``checkpoint`` (a ``.ckpt`` prefix, a
``.ckpt.index`` file, a ``.weights.h5`` file or a folder; relative paths are
tried from the project root, then inside ``<checkpoint_dir>/<sub_name>/``),
else the latest in ``<checkpoint_dir>/<sub_name>/``: the one named by the
``checkpoint`` index file (as ``tf.train.latest_checkpoint``), else the newest
``*.index`` / ``*.weights.h5`` -- by modification time, then by epoch and batch.

TensorFlow is imported only by the functions that load or save.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ArcFaceTFConfig, resolve_project_path
from ..errors import ConfigError, ModelNotFoundError

Format = Literal["tf", "h5"]
FORMATS: tuple[str, ...] = ("tf", "h5")
SIDECAR_FORMAT = "arcface_tf-checkpoint/1"
H5_SUFFIX = ".weights.h5"
_NAME_RE = re.compile(r"e_(\d+)_b_(\d+)")
_INDEX_LINE_RE = re.compile(r'^\s*model_checkpoint_path:\s*"(.*)"\s*$', re.MULTILINE)

NO_DOWNLOAD_HINT = (
    "No weights are downloaded: train one with `python train.py --config <config> --dataset <dir>` "
    "or copy an arcface-tf2 checkpoint (checkpoint, *.ckpt.index, *.ckpt.data-*) there; see checkpoints/README.md"
)


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint on disk. ``path`` is the ``.ckpt`` prefix (tf) or the ``.weights.h5`` file (h5)."""

    path: Path
    format: Format
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path, self.format)

    @property
    def files(self) -> list[Path]:
        if self.format == "h5":
            return [self.path]
        return sorted(self.path.parent.glob(self.path.name + ".*"))

    @property
    def epoch_batch(self) -> tuple[int, int] | None:
        """``(epoch, batch)`` from the sidecar, else from an arcface-tf2 style name ``e_<epoch>_b_<batch>``."""
        if "epoch" in self.meta and "batch" in self.meta:
            return int(self.meta["epoch"]), int(self.meta["batch"])
        return parse_epoch_batch(self.path.name)

    def __str__(self) -> str:
        return str(self.path)


def parse_epoch_batch(name: str) -> tuple[int, int] | None:
    """``e_3_b_120.ckpt`` -> ``(3, 120)`` (arcface-tf2's ``get_ckpt_inf`` naming); None if not of that form."""
    m = _NAME_RE.search(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def sidecar_path(path: Path, fmt: Format) -> Path:
    path = Path(path)
    if fmt == "h5":
        return path.with_name(path.name[: -len(".h5")] + ".json")
    return path.with_name(path.name + ".json")


def read_sidecar(path: Path, fmt: Format) -> dict[str, Any]:
    p = sidecar_path(path, fmt)
    if not p.is_file():
        return {}
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"checkpoint sidecar {p} is not readable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ConfigError(f"checkpoint sidecar {p} must hold a JSON object")
    return meta


def checkpoint_dir_for(config: ArcFaceTFConfig, checkpoint_dir: str | Path | None = None) -> Path:
    """``<checkpoint_dir>/<sub_name>`` as an absolute path (relative dirs are from the project root)."""
    base = resolve_project_path(checkpoint_dir if checkpoint_dir is not None else config.checkpoint_dir)
    return (base / config.sub_name).absolute()


# --- finding ------------------------------------------------------------------
def _ref(path: Path, fmt: Format) -> CheckpointRef:
    return CheckpointRef(path=path, format=fmt, meta=read_sidecar(path, fmt))


def _tf_prefix_exists(prefix: Path) -> bool:
    return prefix.with_name(prefix.name + ".index").is_file()


def _from_index_file(directory: Path) -> Path | None:
    """The latest prefix named by a TF ``checkpoint`` index file (what tf.train.latest_checkpoint reads)."""
    index = directory / "checkpoint"
    if not index.is_file():
        return None
    try:
        m = _INDEX_LINE_RE.search(index.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    if not m:
        return None
    named = Path(m.group(1))
    for cand in ([named] if named.is_absolute() else [directory / named]) + [directory / named.name]:
        if _tf_prefix_exists(cand):
            return cand
    return None


def _sort_key(ref: CheckpointRef, mtime_file: Path) -> tuple:
    try:
        mtime = mtime_file.stat().st_mtime
    except OSError:
        mtime = 0.0
    return (mtime, ref.epoch_batch or (-1, -1), ref.path.name)


def latest_checkpoint(directory: str | Path) -> CheckpointRef | None:
    """The latest checkpoint of either format in ``directory``, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates: list[tuple[tuple, CheckpointRef]] = []
    tf_latest = _from_index_file(directory)
    if tf_latest is not None:
        ref = _ref(tf_latest, "tf")
        candidates.append((_sort_key(ref, tf_latest.with_name(tf_latest.name + ".index")), ref))
    else:
        for index in directory.glob("*.index"):
            prefix = index.with_name(index.name[: -len(".index")])
            ref = _ref(prefix, "tf")
            candidates.append((_sort_key(ref, index), ref))
    for h5 in directory.glob("*" + H5_SUFFIX):
        if h5.is_file():
            ref = _ref(h5, "h5")
            candidates.append((_sort_key(ref, h5), ref))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]


def resolve_checkpoint(path: str | Path) -> CheckpointRef | None:
    """An explicit checkpoint path (prefix, ``.index``, ``.data-*``, ``.weights.h5`` or folder); None if absent."""
    p = Path(path)
    if p.is_dir():
        return latest_checkpoint(p)
    if p.name.endswith(".h5"):
        return _ref(p, "h5") if p.is_file() else None
    if _tf_prefix_exists(p):
        return _ref(p, "tf")
    if p.name.endswith(".index") and p.is_file():
        return _ref(p.with_name(p.name[: -len(".index")]), "tf")
    m = re.match(r"^(.*)\.data-\d+-of-\d+$", p.name)
    if m and p.is_file() and _tf_prefix_exists(p.with_name(m.group(1))):
        return _ref(p.with_name(m.group(1)), "tf")
    return None


def find_checkpoint(config: ArcFaceTFConfig, checkpoint_dir: str | Path | None = None) -> CheckpointRef:
    """The checkpoint the config asks for; :class:`ModelNotFoundError` naming every path searched."""
    directory = checkpoint_dir_for(config, checkpoint_dir)
    if config.checkpoint:
        raw = Path(config.checkpoint)
        tried = [raw] if raw.is_absolute() else [resolve_project_path(raw).absolute(), directory / raw]
        for cand in tried:
            ref = resolve_checkpoint(cand)
            if ref is not None:
                return ref
        raise ModelNotFoundError(
            "ArcFace checkpoint not found: "
            + " nor ".join(str(t) for t in tried)
            + " (expected a .ckpt prefix with its .index/.data files, a .weights.h5 file or a folder of them). "
            + NO_DOWNLOAD_HINT,
            details={"searched": [str(t) for t in tried]},
        )
    ref = latest_checkpoint(directory)
    if ref is None:
        what = "does not exist" if not directory.exists() else "holds no checkpoint"
        raise ModelNotFoundError(
            f"no ArcFace checkpoint for sub_name {config.sub_name!r}: {directory} {what} "
            f"(looked for an arcface-tf2 'checkpoint' index, *.ckpt.index and *{H5_SUFFIX}). " + NO_DOWNLOAD_HINT,
            details={"searched": [str(directory)]},
        )
    return ref


# --- loading ------------------------------------------------------------------
def _check_meta(config: ArcFaceTFConfig, ref: CheckpointRef) -> None:
    for key in ("backbone_type", "embd_shape", "input_size"):
        if key in ref.meta and ref.meta[key] != getattr(config, key):
            raise ConfigError(
                f"checkpoint {ref.path} was saved with {key}={ref.meta[key]!r} "
                f"but the config says {key}={getattr(config, key)!r}"
            )


def _mismatch(config: ArcFaceTFConfig, ref: CheckpointRef, exc: BaseException) -> ConfigError:
    return ConfigError(
        f"checkpoint {ref.path} does not fit the model built from the config "
        f"(backbone_type={config.backbone_type}, embd_shape={config.embd_shape}): {str(exc).splitlines()[0][:300]}"
    )


def load_weights(model, ref: CheckpointRef, *, partial: bool, config: ArcFaceTFConfig | None = None) -> None:
    """``model.load_weights`` for either format.

    ``tf``: arcface-tf2's way, ``model.load_weights(prefix)``; with ``partial``
    the checkpoint may hold more (a head, optimizer slots: ``expect_partial``)
    but every variable of ``model`` must be restored.  ``h5``: strict, by
    layer order.  Shape or structure mismatches raise :class:`ConfigError`.
    """
    import tensorflow as tf

    try:
        if ref.format == "tf":
            status = model.load_weights(str(ref.path))
            if partial:
                status.expect_partial()
            status.assert_existing_objects_matched()
        else:
            model.load_weights(str(ref.path))
    except (ValueError, AssertionError) as exc:
        raise _mismatch(config, ref, exc) if config is not None else ConfigError(
            f"checkpoint {ref.path} does not fit the model: {str(exc).splitlines()[0][:300]}"
        ) from exc
    except (tf.errors.OpError, OSError) as exc:
        raise ConfigError(f"cannot read checkpoint {ref.path}: {str(exc).splitlines()[0][:300]}") from exc


def load_inference_model(config: ArcFaceTFConfig, ref: CheckpointRef):
    """The ``input_image -> embeddings`` model of ``config`` with the weights of ``ref``."""
    from .models import embedding_model, model_from_config

    _check_meta(config, ref)
    if ref.format == "tf":
        model = model_from_config(config, training=False)
        load_weights(model, ref, partial=True, config=config)
        return model
    # HDF5 loads by layer order, so the architecture saved (with or without its head) is rebuilt first
    if ref.meta.get("has_head"):
        num_classes = ref.meta.get("num_classes")
        head_type = ref.meta.get("head_type", config.head_type)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"checkpoint sidecar {ref.sidecar} lacks a valid num_classes")
        train_cfg = config.model_copy(update={"head_type": head_type, "num_classes": num_classes})
        model = model_from_config(train_cfg, training=True)
        load_weights(model, ref, partial=False, config=config)
        return embedding_model(model)
    model = model_from_config(config, training=False)
    load_weights(model, ref, partial=False, config=config)
    return model


# --- saving -------------------------------------------------------------------
def save_checkpoint(
    model,
    directory: str | Path,
    *,
    epoch: int,
    batch: int,
    fmt: Format = "tf",
    meta: dict[str, Any] | None = None,
) -> CheckpointRef:
    """Save ``model`` as ``<directory>/e_<epoch>_b_<batch>.ckpt`` (tf) or ``.weights.h5`` (h5) plus a sidecar."""
    if fmt not in FORMATS:
        raise ConfigError(f"checkpoint format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"e_{epoch}_b_{batch}"
    path = directory / (stem + (".ckpt" if fmt == "tf" else H5_SUFFIX))
    # tf: also writes/updates the 'checkpoint' index file, exactly like arcface-tf2's save_weights
    model.save_weights(str(path), save_format="tf" if fmt == "tf" else "h5")
    info = {
        "format": SIDECAR_FORMAT,
        "weights_format": fmt,
        "epoch": int(epoch),
        "batch": int(batch),
        "has_head": len(model.inputs) > 1,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(meta or {}),
    }
    side = sidecar_path(path, fmt)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(side)
    return CheckpointRef(path=path, format=fmt, meta=info)
