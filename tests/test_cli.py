"""The gallery CLI through its real entry point (a subprocess, like a user)."""
from __future__ import annotations

import csv
import io
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT


def run_cli(*args, data_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "modules.cli", *args, "--data-dir", str(data_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    return proc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("cli")
    enroll = shared_data / "face_recognition_examples" / "video_short_hamilton_clip" / "enroll"
    people = d / "people"
    for name in ("barack_obama", "lin_manuel_miranda"):
        (people / name).mkdir(parents=True)
        src = next(enroll.glob(f"{name}.*"))
        (people / name / src.name).write_bytes(src.read_bytes())
    p = run_cli("enroll-dir", str(people), data_dir=d)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["enrolled"] == {"barack_obama": 1, "lin_manuel_miranda": 1}
    return d


def test_identify_and_people(data_dir, fr_images):
    p = run_cli("identify", str(fr_images / "obama2.jpg"), data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    assert [f["name"] for f in json.loads(p.stdout)["faces"]] == ["barack_obama"]
    p = run_cli("people", data_dir=data_dir)
    assert json.loads(p.stdout)["total"] == 2


def test_export_csv(data_dir):
    p = run_cli("export", "--format", "csv", data_dir=data_dir)
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert sorted(r["person"] for r in rows) == ["barack_obama", "lin_manuel_miranda"]


def test_errors_are_one_line_and_exit_2(data_dir, tmp_path):
    p = run_cli("rename", "nobody", "somebody", data_dir=data_dir)
    assert p.returncode == 2 and p.stderr.startswith("error:") and "Traceback" not in p.stderr
    p = run_cli("identify", str(tmp_path / "missing.jpg"), data_dir=data_dir)
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_pickle_import_needs_trust_and_export_round_trips(data_dir, tmp_path):
    legacy = tmp_path / "known.pkl"
    rng = np.random.default_rng(1)
    legacy.write_bytes(pickle.dumps({"alice": rng.normal(size=512).astype(np.float32),
                                     "bob": [rng.normal(size=512).astype(np.float32)] * 2}))
    p = run_cli("import-pickle", str(legacy), "--embedder", "arc_res50", "--gallery", "legacy", data_dir=data_dir)
    assert p.returncode == 2 and "arbitrary code" in p.stderr
    p = run_cli("people", "--gallery", "legacy", data_dir=data_dir)
    assert p.returncode == 2  # nothing was written: the gallery does not exist
    p = run_cli("import-pickle", str(legacy), "--embedder", "arc_res50", "--gallery", "legacy", "--trusted", data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out.pkl"
    p = run_cli("export-pickle", str(out), "--gallery", "legacy", "--embedder", "arc_res50", data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    from modules.storage import restricted_loads

    back = restricted_loads(out.read_bytes())
    assert sorted(back) == ["alice", "bob"] and back["alice"].shape == (512,)
    # imported embeddings have no face crops, so re-embedding them with SFace is refused with the reason
    p = run_cli("reembed", "--gallery", "legacy", data_dir=data_dir)
    assert p.returncode == 2 and "crop" in p.stderr
