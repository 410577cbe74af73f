"""Legacy ``{name: embedding}`` pickles: refused unless trusted, restricted even when trusted, round trip."""
from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from modules.errors import ConflictError, EmbedderMismatchError, InvalidRequestError, UntrustedPickleError
from modules.storage import GalleryStore, NewFace, export_legacy_pickle, import_legacy_pickle, open_gallery, restricted_loads

DIM = 12


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(99)


@pytest.fixture
def store(tmp_path: Path):
    s = open_gallery(tmp_path / "gallery.db")
    yield s
    s.close()


def dump(path: Path, obj, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def db_rows(store: GalleryStore) -> tuple[int, int, int]:
    conn = sqlite3.connect(store.path)
    try:
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("galleries", "people", "faces"))
    finally:
        conn.close()


def test_untrusted_is_refused_and_nothing_written(store, tmp_path, rng):
    path = dump(tmp_path / "legacy.pkl", {"alice": unit(rng, 1)[0]})
    with pytest.raises(UntrustedPickleError) as exc:
        import_legacy_pickle(store, path, "main", "sface_2021dec", trusted=False)
    assert exc.value.status == 400 and "arbitrary code" in exc.value.message
    with pytest.raises(UntrustedPickleError):
        store.import_legacy_pickle(path, "main", "sface_2021dec")  # default: untrusted
    assert db_rows(store) == (0, 0, 0)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_trusted_dict_of_arrays(store, tmp_path, rng, protocol):
    embs = unit(rng, 3).astype(np.float64) * 3.0  # not normalised, float64: both accepted
    legacy = {"alice": embs[0], "bob": embs[1][None, :], "carol": embs[2].tolist()}
    path = dump(tmp_path / "legacy.pkl", legacy, protocol)
    out = store.import_legacy_pickle(path, "main", "sface_2021dec", trusted=True)
    assert (out["people"], out["faces"], out["dim"]) == (3, 3, DIM)
    assert out["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for i, name in enumerate(["alice", "bob", "carol"]):
        [face] = store.list_faces("main", name, with_embeddings=True)
        assert face.embedder == "sface_2021dec" and not face.has_crop
        np.testing.assert_allclose(face.embedding, embs[i] / np.linalg.norm(embs[i]), atol=1e-6)
        [[top]] = store.search("main", embs[i] / 3.0, "sface_2021dec", top_k=1)
        assert top.person == name


def test_trusted_dict_of_lists(store, tmp_path, rng):
    a, b = unit(rng, 3), unit(rng, 2)
    legacy = {"alice": [a[0], a[1][None, :], a[2].tolist()], "bob": list(b)}
    path = dump(tmp_path / "legacy.pkl", legacy)
    out = import_legacy_pickle(store, path, "main", "m1", trusted=True)
    assert (out["people"], out["faces"]) == (2, 5)
    assert store.get_person("main", "alice").num_faces == 3
    # importing the same file again would duplicate every face
    with pytest.raises(ConflictError, match="already imported"):
        import_legacy_pickle(store, path, "main", "m1", trusted=True)
    assert db_rows(store)[2] == 5


class _SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("where", ["value", "nested", "top"])
def test_malicious_pickle_refused_even_when_trusted(store, tmp_path, rng, where):
    marker = tmp_path / "pwned"
    bomb = _SystemCall(marker)
    obj = {
        "value": {"alice": unit(rng, 1)[0], "mallory": bomb},
        "nested": {"alice": [unit(rng, 1)[0], bomb]},
        "top": bomb,
    }[where]
    path = dump(tmp_path / "evil.pkl", obj)
    with pytest.raises(UntrustedPickleError, match="posix.system|os.system|nt.system"):
        import_legacy_pickle(store, path, "main", "m1", trusted=True)
    assert not marker.exists()
    assert db_rows(store) == (0, 0, 0)
    with pytest.raises(UntrustedPickleError, match="builtins.eval"):
        restricted_loads(pickle.dumps({"x": _Eval()}))


def test_codecs_encode_limited_to_text_codecs():
    # protocol-2 pickles call _codecs.encode(text, 'latin1'); another codec is refused
    evil = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x04\x00\x00\x00zlibq\x02\x86q\x03Rq\x04."
    with pytest.raises(UntrustedPickleError):
        restricted_loads(evil)


@pytest.mark.parametrize(
    "obj, match",
    [
        (["not", "a", "dict"], "dict"),
        ({}, "empty"),
        ({1: np.ones(DIM)}, "keys"),
        ({"a": np.ones(DIM), "b": np.ones(DIM + 1)}, "dimension"),
        ({"a": np.ones(DIM), "b": np.full(DIM, np.nan)}, "NaN"),
        ({"a": np.zeros(DIM)}, "zero"),
        ({"a": "text"}, "not an embedding"),
        ({"a": []}, "no embeddings"),
        ({"a/b": np.ones(DIM)}, "'/'"),
        ({"a": np.ones((2, 2, DIM))}, "shape"),
    ],
)
def test_invalid_legacy_content_imports_nothing(store, tmp_path, rng, obj, match):
    store.add_faces("main", "existing", [NewFace(unit(rng, 1)[0], "m1")])
    before = db_rows(store)
    path = dump(tmp_path / "bad.pkl", obj)
    with pytest.raises(InvalidRequestError, match=match):
        import_legacy_pickle(store, path, "main", "m1", trusted=True)
    assert db_rows(store) == before


def test_not_a_pickle_or_missing(store, tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(InvalidRequestError):
        import_legacy_pickle(store, bad, "main", "m1", trusted=True)
    with pytest.raises(InvalidRequestError, match="not found"):
        import_legacy_pickle(store, tmp_path / "missing.pkl", "main", "m1", trusted=True)


def test_all_or_nothing_against_the_gallery(store, tmp_path, rng):
    store.add_faces("main", "existing", [NewFace(unit(rng, 1)[0], "other-model")])
    before = db_rows(store)
    path = dump(tmp_path / "legacy.pkl", {"a": unit(rng, 1)[0], "b": unit(rng, 1)[0]})
    with pytest.raises(EmbedderMismatchError):
        import_legacy_pickle(store, path, "main", "m1", trusted=True)
    assert db_rows(store) == before


def test_round_trip_list_and_mean(store, tmp_path, rng):
    enrolled = {name: unit(rng, n) for name, n in (("alice", 3), ("bob", 1), ("carol", 2))}
    for name, embs in enrolled.items():
        store.add_faces("main", name, [NewFace(e, "m1") for e in embs])
    store.add_person("main", "no-faces")

    out = tmp_path / "exports" / "gallery_list.pkl"
    res = store.export_legacy_pickle(out, "main", "m1", mode="list")
    assert (res["people"], res["faces"]) == (3, 6)
    assert sorted(p.name for p in out.parent.iterdir()) == ["gallery_list.pkl"]  # no temp file left
    loaded = restricted_loads(out.read_bytes())
    assert set(loaded) == set(enrolled)
    for name, embs in enrolled.items():
        np.testing.assert_allclose(np.stack(loaded[name]), embs, atol=1e-7)
    store.import_legacy_pickle(out, "copy", "m1", trusted=True)
    for name, embs in enrolled.items():
        got = np.stack([f.embedding for f in store.list_faces("copy", name, with_embeddings=True)])
        np.testing.assert_allclose(got, embs, atol=1e-6)

    mean_path = tmp_path / "gallery_mean.pkl"
    export_legacy_pickle(store, mean_path, "main", "m1", mode="mean")
    with open(mean_path, "rb") as f:
        means = pickle.load(f)  # what the old tools do
    for name, embs in enrolled.items():
        want = embs.mean(axis=0)
        want /= np.linalg.norm(want)
        assert means[name].shape == (DIM,) and means[name].dtype == np.float32
        np.testing.assert_allclose(means[name], want, atol=1e-6)
    res = store.import_legacy_pickle(mean_path, "means", "m1", trusted=True)
    assert (res["people"], res["faces"]) == (3, 3)


def test_export_refuses_other_embedder_and_writes_nothing(store, tmp_path, rng):
    store.add_faces("main", "alice", [NewFace(unit(rng, 1)[0], "m1")])
    out = tmp_path / "out.pkl"
    with pytest.raises(EmbedderMismatchError):
        store.export_legacy_pickle(out, "main", "m2")
    with pytest.raises(InvalidRequestError):
        store.export_legacy_pickle(out, "main", "m1", mode="median")
    assert list(tmp_path.glob("*.pkl*")) == [] and list(tmp_path.glob(".out.pkl*")) == []
