"""The TensorFlow ArcFace (arcface-tf2 on tf_keras): model, training, checkpoints, embedder, CLI.

Real models, real LFW faces, no mocks.  Slow parts are built once per module:
a MobileNetV2 model trained for a few dozen steps on 5 aligned LFW people, and
a ResNet50 checkpoint written the way arcface-tf2's train.py writes one.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from modules.config import ArcFaceTFConfig, load_config
from modules.errors import ConfigError, ModelNotFoundError

ROOT = Path(__file__).resolve().parents[1]
RES50_CONFIG = ROOT / "configs" / "arc_res50.yaml"
MBV2_CONFIG = ROOT / "configs" / "arc_mbv2.yaml"
N_PEOPLE, IMAGES_PER_PERSON = 5, 8
TRAIN_STEPS, TRAIN_BATCH = 48, 8


@pytest.fixture(scope="module", autouse=True)
def _tf_threads():
    """Two cores are shared: keep TensorFlow to them (before its runtime starts)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(2)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # another test module already started TensorFlow
        pass


@pytest.fixture(scope="module")
def lfw_subset(shared_data, tmp_path_factory) -> Path:
    """``<person>/<image>`` folder of symlinks: the first 5 LFW people with >= 6 images, up to 8 each."""
    images = shared_data / "lfw" / "images"
    people = [p for p in sorted(images.iterdir()) if len(list(p.glob("*.jpg"))) >= 6][:N_PEOPLE]
    assert len(people) == N_PEOPLE
    root = tmp_path_factory.mktemp("lfw_subset")
    for p in people:
        (root / p.name).mkdir()
        for f in sorted(p.glob("*.jpg"))[:IMAGES_PER_PERSON]:
            (root / p.name / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def faces(lfw_subset) -> np.ndarray:
    """A few aligned BGR crops (the embedder's input), one per person plus one more."""
    from modules.arcface_tf.train import align_images

    people = sorted(lfw_subset.iterdir())
    files = [sorted(p.iterdir())[0] for p in people] + [sorted(people[0].iterdir())[1]]
    crops, stats = align_images(files)
    assert stats["aligned"] == len(files)
    return np.stack(crops)


def _arc_config(path: Path, **embedder_updates):
    cfg = load_config(path)
    return cfg.model_copy(update={"embedder": cfg.embedder.model_copy(update=embedder_updates)})


def _reference_embeddings(model, faces_bgr: np.ndarray, flip: bool = True) -> np.ndarray:
    """What the embedder must return, computed from an in-memory model (arcface-tf2's test.py recipe)."""
    from modules.arcface_tf.models import embedding_model
    from modules.embedders.base import l2_normalize

    emb = embedding_model(model)
    x = faces_bgr[..., ::-1].astype(np.float32) / 255.0  # BGR -> RGB, [0, 1]
    out = l2_normalize(emb(x, training=False).numpy())
    if flip:
        out = out + l2_normalize(emb(x[:, :, ::-1], training=False).numpy())
    return l2_normalize(out)


def _assert_same_weights(loaded, trained_model) -> None:
    """Every variable of the loaded inference model equals the in-memory one (backbone, BN statistics, ...)."""
    from modules.arcface_tf.models import embedding_model

    want = embedding_model(trained_model).weights
    got = loaded.weights
    assert [w.shape for w in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy(), err_msg=w.name)


# --- training on real faces --------------------------------------------------------
@pytest.fixture(scope="module")
def trained(lfw_subset, tmp_path_factory):
    """MobileNetV2 + ArcHead trained for 48 steps on 5 aligned LFW people (checkpoints in h5 format)."""
    from modules.arcface_tf.train import load_dataset, train

    data = load_dataset(lfw_subset, align=True, min_images_per_person=2)
    # a gentler logit scale than arc_mbv2's 64 keeps the per-step loss of a tiny run readable
    cfg = _arc_config(MBV2_CONFIG, logist_scale=16.0)
    out = tmp_path_factory.mktemp("ckpt_trained")
    result = train(cfg, data, epochs=1, batch_size=TRAIN_BATCH, steps_per_epoch=TRAIN_STEPS,
                   checkpoint_dir=out, fmt="h5", seed=0)
    return cfg, data, result


def test_aligned_dataset_from_real_lfw(trained):
    _, data, _ = trained
    assert data.num_classes == N_PEOPLE
    assert data.images.shape[1:] == (112, 112, 3) and data.images.dtype == np.uint8
    assert data.stats["images"] == sum(1 for _ in data.root.glob("*/*.jpg"))
    assert data.stats["aligned"] + data.stats["no_face"] + data.stats["unreadable"] == data.stats["images"]
    assert len(data) == data.stats["aligned"] >= 0.9 * data.stats["images"]


def test_training_loss_falls(trained):
    _, _, result = trained
    losses = np.asarray(result.losses)
    assert len(losses) == TRAIN_STEPS and np.isfinite(losses).all()
    first, last = losses[:8].mean(), losses[-8:].mean()
    assert last < 0.8 * first, f"loss did not fall: first steps {losses[:8]}, last steps {losses[-8:]}"


def test_training_writes_arcface_tf2_named_checkpoint(trained):
    cfg, _, result = trained
    ckpt = result.checkpoints[-1]
    assert ckpt.path == result.checkpoint_dir / f"e_1_b_{TRAIN_STEPS}.weights.h5"
    assert result.checkpoint_dir.name == cfg.embedder.sub_name
    assert ckpt.path.is_file() and ckpt.sidecar.is_file()
    assert ckpt.meta["num_classes"] == N_PEOPLE and ckpt.meta["step"] == TRAIN_STEPS and ckpt.meta["has_head"]


def test_training_resumes_from_the_latest_checkpoint(trained):
    """Like arcface-tf2, a second run continues after the saved epoch/batch (here: nothing left to do)."""
    from modules.arcface_tf.train import train

    cfg, data, result = trained
    again = train(cfg, data, epochs=1, batch_size=TRAIN_BATCH, steps_per_epoch=TRAIN_STEPS,
                  checkpoint_dir=result.checkpoint_dir.parent, fmt="h5")
    assert again.start_step == TRAIN_STEPS + 1 and again.losses == [] and again.checkpoints == []
    _assert_same_weights(again.embedding_model(), result.model)


@pytest.fixture(scope="module")
def mbv2_embedders(trained, tmp_path_factory):
    """``fmt -> ArcFaceTFEmbedder`` on the trained model's checkpoint in that format (built once each)."""
    from modules.arcface_tf.checkpoints import save_checkpoint
    from modules.embedders.arcface_tf import ArcFaceTFEmbedder

    cfg, _, result = trained
    cache = {}

    def get(fmt: str):
        if fmt not in cache:
            if fmt == "h5":
                ckdir = result.checkpoint_dir.parent  # written by train() itself
            else:
                ckdir = tmp_path_factory.mktemp("ckpt_tf")
                ref = save_checkpoint(result.model, ckdir / cfg.embedder.sub_name, epoch=1, batch=TRAIN_STEPS,
                                      fmt="tf")
                assert (ckdir / cfg.embedder.sub_name / "checkpoint").is_file()
                assert ref.path.with_name(ref.path.name + ".index").is_file()
            emb_cfg = cfg.embedder.model_copy(update={"checkpoint_dir": str(ckdir), "batch_size": 4})
            cache[fmt] = ArcFaceTFEmbedder(emb_cfg, model_id="arc_mbv2_test")
        return cache[fmt]

    return get


@pytest.mark.parametrize("fmt", ["h5", "tf"])
def test_reloaded_checkpoint_gives_in_memory_embeddings(trained, mbv2_embedders, faces, fmt):
    from modules.arcface_tf.models import embedding_model

    _, _, result = trained
    embedder = mbv2_embedders(fmt)
    assert embedder.checkpoint.format == fmt
    _assert_same_weights(embedder._model, result.model)

    got = embedder.embed(faces)  # flip-averaged: 6 faces + mirrors = 12 crops, run in batches of 4
    assert got.shape == (len(faces), 512)
    np.testing.assert_allclose(got, _reference_embeddings(result.model, faces), atol=1e-5)
    raw_want = embedding_model(result.model)(faces[..., ::-1].astype(np.float32) / 255.0, training=False).numpy()
    np.testing.assert_allclose(embedder._forward(faces), raw_want, atol=1e-4, rtol=1e-5)


def test_embedder_is_thread_safe(mbv2_embedders, faces):
    embedder = mbv2_embedders("h5")
    want = embedder.embed(faces)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(2):
                results.append(embedder.embed(faces))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 6
    for r in results:
        np.testing.assert_allclose(r, want, atol=1e-6)


# --- arcface-tf2 compatibility, ResNet50 from configs/arc_res50.yaml ---------------------
@pytest.fixture(scope="module")
def arcface_tf2_checkpoint(tmp_path_factory):
    """A checkpoint written the way arcface-tf2's train.py writes one (TF format, ResNet50 + ArcHead).

    arcface-tf2: ``model = ArcFaceModel(size=cfg['input_size'], backbone_type=..., num_classes=...,
    head_type=..., embd_shape=..., w_decay=..., training=True)``, SGD(momentum=0.9, nesterov=True),
    ``model.compile(optimizer, loss=SoftmaxLoss())`` and ``model.save_weights('checkpoints/<sub_name>/e_1_b_3.ckpt')``
    (also what its ModelCheckpoint callback does).  Weights and BN statistics are randomised so a load
    that silently skipped anything would show.
    """
    import tensorflow as tf
    import tf_keras

    from modules.arcface_tf.losses import SoftmaxLoss
    from modules.arcface_tf.models import ArcFaceModel

    cfg = load_config(RES50_CONFIG).embedder
    tf_keras.utils.set_random_seed(123)
    model = ArcFaceModel(size=cfg.input_size, backbone_type=cfg.backbone_type, num_classes=10,
                         head_type=cfg.head_type, embd_shape=cfg.embd_shape, w_decay=cfg.w_decay, training=True)
    optimizer = tf_keras.optimizers.legacy.SGD(learning_rate=tf.constant(0.01), momentum=0.9, nesterov=True)
    model.compile(optimizer=optimizer, loss=SoftmaxLoss())
    rng = np.random.default_rng(0)
    for v in model.variables:
        if "moving_mean" in v.name:
            v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32))
        elif "moving_variance" in v.name:
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
    # one (zero) update creates the optimizer's slots, as in a checkpoint saved mid-training
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    root = tmp_path_factory.mktemp("arcface_tf2")
    model.save_weights(str(root / "checkpoints" / cfg.sub_name / "e_1_b_3.ckpt"))
    return root / "checkpoints", model


@pytest.fixture(scope="module")
def res50_embedder(arcface_tf2_checkpoint):
    from modules.embedders.arcface_tf import ArcFaceTFEmbedder

    ckdir, _ = arcface_tf2_checkpoint
    cfg = load_config(RES50_CONFIG)
    emb_cfg = cfg.embedder.model_copy(update={"checkpoint_dir": str(ckdir)})
    return ArcFaceTFEmbedder(emb_cfg, model_id=cfg.name)


def test_res50_config_embeds_unit_vectors(res50_embedder, faces):
    cfg = load_config(RES50_CONFIG)
    assert isinstance(cfg.embedder, ArcFaceTFConfig)
    assert cfg.embedder.backbone_type == "ResNet50" and cfg.embedder.embd_shape == 512
    assert res50_embedder.dim == 512 and res50_embedder.model_id == "arc_res50"
    out = res50_embedder.embed(faces)
    assert out.shape == (len(faces), 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(out).all()
    assert res50_embedder.embed_one(faces[0]).shape == (512,)
    assert res50_embedder.embed(faces[:0]).shape == (0, 512)


def test_arcface_tf2_checkpoint_loads_with_identical_embeddings(arcface_tf2_checkpoint, res50_embedder, faces):
    ckdir, model = arcface_tf2_checkpoint
    sub = ckdir / "arc_res50"
    assert sorted(p.name for p in sub.iterdir()) == [
        "checkpoint", "e_1_b_3.ckpt.data-00000-of-00001", "e_1_b_3.ckpt.index"]
    assert res50_embedder.checkpoint.format == "tf"
    assert res50_embedder.checkpoint.path == sub / "e_1_b_3.ckpt"  # found through the 'checkpoint' index file
    np.testing.assert_allclose(res50_embedder.embed(faces), _reference_embeddings(model, faces), atol=1e-5)
    _assert_same_weights(res50_embedder._model, model)


# --- errors --------------------------------------------------------------------------
def test_missing_checkpoint_dir_raises_model_not_found(tmp_path):
    from modules.embedders.arcface_tf import ArcFaceTFEmbedder

    cfg = load_config(RES50_CONFIG).embedder.model_copy(update={"checkpoint_dir": str(tmp_path / "nowhere")})
    with pytest.raises(ModelNotFoundError) as err:
        ArcFaceTFEmbedder(cfg, model_id="arc_res50")
    assert str(tmp_path / "nowhere" / "arc_res50") in err.value.message
    assert "No weights are downloaded" in err.value.message

    (tmp_path / "empty" / "arc_res50").mkdir(parents=True)
    cfg = cfg.model_copy(update={"checkpoint_dir": str(tmp_path / "empty")})
    with pytest.raises(ModelNotFoundError, match="holds no checkpoint") as err:
        ArcFaceTFEmbedder(cfg, model_id="arc_res50")
    assert str(tmp_path / "empty" / "arc_res50") in err.value.message


def test_wrong_explicit_checkpoint_raises_model_not_found(tmp_path):
    from modules.embedders.arcface_tf import ArcFaceTFEmbedder

    missing = tmp_path / "weights" / "e_9_b_9.ckpt"
    cfg = load_config(RES50_CONFIG).embedder.model_copy(update={"checkpoint": str(missing)})
    with pytest.raises(ModelNotFoundError) as err:
        ArcFaceTFEmbedder(cfg, model_id="arc_res50")
    assert str(missing) in err.value.message


def test_checkpoint_of_another_shape_is_a_config_error(trained):
    from modules.embedders.arcface_tf import ArcFaceTFEmbedder

    cfg, _, result = trained
    emb_cfg = cfg.embedder.model_copy(update={"checkpoint": str(result.checkpoints[-1].path), "embd_shape": 128})
    with pytest.raises(ConfigError, match="embd_shape"):
        ArcFaceTFEmbedder(emb_cfg, model_id="x")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d["embedder"].update(backbone="ResNet50"), ("embedder", "backbone", "unknown key")),
        (lambda d: d["embedder"].update(embd_shape="large"), ("embedder", "embd_shape", "integer")),
        (lambda d: d["embedder"].update(backbone_type="ResNet101"), ("embedder", "backbone_type", "ResNet50")),
        (lambda d: d["train"].update(base_lr="fast"), ("train.base_lr", "number")),
    ],
)
def test_bad_config_raises_config_error_naming_the_key(tmp_path, edit, words):
    raw = yaml.safe_load(RES50_CONFIG.read_text())
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for word in words:
        assert word in err.value.message


def test_shipped_configs_are_valid():
    for path in (RES50_CONFIG, MBV2_CONFIG):
        cfg = load_config(path)
        assert cfg.embedder.type == "arcface_tf"
        assert "python -m benchmarks.verify" in cfg.description
        assert cfg.matching.verify_threshold == 0.35 and cfg.matching.identify_threshold == 0.45


# --- the train CLI ------------------------------------------------------------------
def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_train_cli_missing_dataset_exits_2(tmp_path):
    missing = tmp_path / "no_such_dataset"
    proc = _run_cli("--config", str(RES50_CONFIG), "--dataset", str(missing), "--checkpoint-dir", str(tmp_path / "ck"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "dataset directory not found" in lines[0] and str(missing) in lines[0]
    assert not (tmp_path / "ck").exists()


def test_train_cli_rejects_empty_and_single_person_datasets(tmp_path, lfw_subset):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run_cli("--config", str(MBV2_CONFIG), "--dataset", str(empty))
    assert proc.returncode == 2 and "holds no images" in proc.stderr and "Traceback" not in proc.stderr

    one = tmp_path / "one"
    person = sorted(lfw_subset.iterdir())[0]
    (one / person.name).mkdir(parents=True)
    for f in sorted(person.iterdir())[:3]:
        (one / person.name / f.name).symlink_to(f.resolve())
    proc = _run_cli("--config", str(MBV2_CONFIG), "--dataset", str(one), "--align")
    assert proc.returncode == 2 and "at least 2 people" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
