"""Evaluation runner: a tiny synthetic set with an untrained bundle and the teacher, a stand-in
DAD-3DHeads folder, the ONNX-file adapter against the engine's landmark stage, and the CLI's errors."""

import csv
import json
import shutil

import numpy as np
import pytest

from engine.frame import Face, Frame
from landmark_bundle import tiny_bundle
from plugins.landmarks.stage import LandmarkStage
from training.evaluate import main
from training.evaluation.metrics import nme
from training.evaluation.models import BundleModel, OnnxModel, TeacherModel
from training.evaluation.nmlc import MeshVertices, nmlc
from training.evaluation.synthetic import SyntheticConfig, SyntheticReader, build_synthetic

try:  # the readers' DAD-3DHeads stand-in writer (a fixture): importing it registers it here
    from test_eval_readers import dad_root  # noqa: F401
except ImportError:  # pragma: no cover
    dad_root = None

N = 6


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def synthetic_run(bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_synthetic")
    rc = main(["--model", f"tiny={bundle}", "--baseline", "teacher", "--dataset", f"synthetic={tmp / 'set'}",
               "--synthetic-size", "128", "--limit", str(N), "--threads", "1", "--out", str(tmp / "out")])
    assert rc == 0
    return tmp


def test_synthetic_run_writes_tables_and_plots(synthetic_run):
    out = synthetic_run / "out"
    for stem in ("table1_synthetic", "table2_ablation", "table3_cross_dataset", "regions", "pose", "summary"):
        assert (out / f"{stem}.md").read_text().startswith("### ")
        rows = list(csv.reader(open(out / f"{stem}.csv")))
        assert len(rows) >= 3, stem  # header + 2 models
    header = next(csv.reader(open(out / "table1_synthetic.csv")))
    assert header[:2] == ["Model", "full"] and any(h.startswith("yaw: ") for h in header)
    for png in ("synthetic_landmark_errors.png", "synthetic_landmark_nmlc.png", "synthetic_error_vs_yaw.png"):
        assert (out / "plots" / png).stat().st_size > 5000
    report = (out / "report.md").read_text()
    assert "Table 1" in report and "plots/synthetic_error_vs_yaw.png" in report
    per_image = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(per_image) == 2 * N and all(np.isfinite(float(r["nme"])) for r in per_image)


def test_synthetic_metrics_are_consistent(synthetic_run):
    res = json.loads((synthetic_run / "out" / "results.json").read_text())
    assert res["models"] == ["tiny", "3DDFAv2 (teacher)"]
    info = res["datasets"]["synthetic"]
    assert info["images"] == N and info["nmlc_levels"] >= 1 and 0 < info["spacing"] < 1.0
    for name, m in res["metrics"]["synthetic"].items():
        assert m["failed"] == 0
        nme_full, nmlc_full = m["nme"]["regions"]["full"], m["nmlc"]["regions"]["full"]
        assert np.isfinite([nme_full, nmlc_full, m["pose"]["geodesic_deg"], m["pose"]["frobenius"]]).all()
        assert nmlc_full <= nme_full + 1e-4, name  # NMLC may pick the landmark vertices themselves
        for region in ("contour", "brows", "nose", "eyes", "mouth"):
            assert np.isfinite(m["nmlc"]["regions"][region])
        assert "yaw" in m["nmlc"]["categories"] and "yaw" in m["pose_categories"]
    teacher = res["metrics"]["synthetic"]["3DDFAv2 (teacher)"]
    assert teacher["nme"]["regions"]["full"] < 20
    assert teacher["pose"]["geodesic_deg"] < 30
    assert info["spacing"] < teacher["nmlc"]["regions"]["full"]


def test_synthetic_set_is_exact_deterministic_and_cached(synthetic_run, tmp_path):
    root = synthetic_run / "set"
    samples = list(SyntheticReader(root))
    assert len(samples) == N
    for s in samples:  # the landmarks are mesh vertices seen through the stored camera
        np.testing.assert_allclose(s.project(s.landmarks_3d), s.landmarks_2d, atol=1e-3)
        assert s.attributes["yaw"] in ("0-30", "30-60", "60+") and s.attributes["box"] in ("detector", "landmarks")
    gt = np.stack([s.landmarks_2d for s in samples])
    boxes = np.stack([s.box for s in samples])
    assert nmlc(gt, boxes, MeshVertices.from_samples(samples), k=64).value == pytest.approx(0.0, abs=1e-3)
    # A fresh build of the first sample is identical; the existing cache is reused without rendering.
    build_synthetic(tmp_path, SyntheticConfig(samples=1, size=128), progress=False)
    with np.load(root / "samples" / "000000.npz") as a, np.load(tmp_path / "samples" / "000000.npz") as b:
        for key in ("seed", "K", "R", "t", "landmarks_2d", "box", "vertices"):
            np.testing.assert_array_equal(a[key], b[key])
    stamp = (root / "manifest.json").stat().st_mtime_ns
    build_synthetic(root, SyntheticConfig(samples=N, size=128), progress=False)
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="another config"):
        build_synthetic(root, SyntheticConfig(samples=N, size=96), progress=False)


def test_adapters_match_the_engine_stage(bundle, synthetic_run, tmp_path):
    s = SyntheticReader(synthetic_run / "set")
    sample = next(iter(s))
    image, box = sample.load_image(), sample.box[None]
    pred = BundleModel.from_dir(bundle).predict(image, box)
    stage = LandmarkStage(LandmarkStage.Options(bundle=str(bundle), backend="onnxruntime", tracking=False))
    frame = Frame("s", 0, 0.0, 0.0, image, [Face(box=sample.box, score=1.0, keypoints=np.zeros((5, 2), np.float32))])
    stage.process([frame])
    stage.close()
    np.testing.assert_allclose(pred["landmarks_2d"][0], frame.faces[0].landmarks_2d, atol=1e-4)
    np.testing.assert_allclose(pred["rotation"][0], frame.faces[0].rotation, atol=1e-5)
    # A bare ONNX file: convention from the manifest beside it, or from --input-size alone.
    beside = OnnxModel(bundle / "model.onnx").predict(image, box)
    np.testing.assert_allclose(beside["landmarks_2d"], pred["landmarks_2d"], atol=1e-4)
    bare = tmp_path / "m.onnx"
    shutil.copy(bundle / "model.onnx", bare)
    with pytest.raises(Exception, match="input-size"):
        OnnxModel(bare)
    size = BundleModel.from_dir(bundle).bundle.input_size
    np.testing.assert_allclose(OnnxModel(bare, input_size=size).predict(image, box)["landmarks_2d"],
                               pred["landmarks_2d"], atol=1e-4)
    t = TeacherModel().predict(image, box, sample.extras["K"])
    assert t["landmarks_2d"].shape == (1, 68, 2) and t["rotation"].shape == (1, 3, 3)
    assert nme(t["landmarks_2d"], sample.landmarks_2d[None], box) < 20


@pytest.mark.skipif(dad_root is None, reason="tests/test_eval_readers.py stand-in writer not importable")
def test_dad3d_standin_runs(bundle, dad_root, tmp_path):  # noqa: F811
    root, _ = dad_root
    np.savez(root / "lmk.npz", vertex_ids=np.arange(68) % 36)
    out = tmp_path / "out"
    rc = main(["--model", str(bundle), "--baseline", "teacher", "--dataset", "dad3d", "--root", str(root),
               "--faces", str(root / "faces.npy"), "--landmark-embedding", str(root / "lmk.npz"),
               "--threads", "1", "--no-plots", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["datasets"]["dad3d"]["images"] == 3
    for m in res["metrics"]["dad3d"].values():
        assert np.isfinite([m["nme"]["regions"]["full"], m["nmlc"]["regions"]["full"], m["pose"]["frobenius"]]).all()
        assert set(m["nmlc"]["categories"]) >= {"gender", "light", "pose"}
    assert "dad3d NMLC" in (out / "table2_ablation.md").read_text()


def test_missing_dataset_is_one_line_and_exit_2(tmp_path, capsys):
    rc = main(["--baseline", "teacher", "--dataset", f"dad3d={tmp_path / 'nowhere'}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: DAD-3DHeads:") and str(tmp_path / "nowhere") in err
    assert len(err.splitlines()) == 1
    rc = main(["--model", str(tmp_path / "no_bundle"), "--dataset", "synthetic", "--out", str(tmp_path / "o")])
    assert rc == 2 and "no_bundle" in capsys.readouterr().err
