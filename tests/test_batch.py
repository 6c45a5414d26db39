"""Dataset batch job, local path: outputs, failures, SIGKILL + resume, --retry-failed (engine/batch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from celebvhq_fixture import make_mini_celebvhq
from clips import make_clip, make_corrupt_file
from engine.batch import BatchOptions, DatasetError, list_celebvhq, list_files, read_meta, run_batch, validate_clip

CONFIG = """
[[sources]]   # ignored by batch jobs (their input replaces it), required by the schema
type = "file"
id = "unused"
path = "unused.mp4"

[[stages]]
type = "centerface"
input_size = 128
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("celebvhq")
    data = make_mini_celebvhq(root / "CelebV-HQ")
    data["config"] = root / "batch.toml"
    data["config"].write_text(CONFIG)
    return data


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> dict:
    """One uninterrupted run: the outputs every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "out"
    totals = run_batch(dataset["config"], list_celebvhq(dataset["root"]), out, BatchOptions(workers=2, progress=False))
    return {"out": out, "totals": totals}


def npz_bytes(out: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted((out / "clips").glob("*.npz"))}


def test_good_clips_have_results_corrupt_ones_are_recorded(dataset, reference):
    out, totals = reference["out"], reference["totals"]
    assert (totals["ok"], totals["failed"], totals["missing"]) == (len(dataset["good"]), len(dataset["corrupt"]), 1)
    assert sorted(npz_bytes(out)) == dataset["good"]
    info = json.loads((dataset["root"] / "celebvhq_info.json").read_text())
    for cid in dataset["good"]:
        path = out / "clips" / f"{cid}.npz"
        assert validate_clip(path) is not None
        with np.load(path) as z:
            meta = read_meta(z)
            assert z["frame_index"].tolist() == list(range(8)) and np.all(np.diff(z["pts"]) > 0)
            n = len(z["face_frame"])
            assert n >= 6, f"{cid}: the astronaut should be found on most frames, got {n} faces"
            assert z["boxes"].shape == (n, 4) and z["keypoints"].shape == (n, 5, 2) and z["scores"].min() >= 0.5
            assert np.all(z["boxes"][:, 2] <= meta["width"]) and np.all(z["boxes"][:, 3] <= meta["height"])
            assert "landmarks_2d" not in z.files  # no landmark stage in this config
        assert meta["attributes"]["celebvhq"] == info["clips"][cid]  # attributes copied verbatim
        assert meta["attributes"]["meta_info"] == info["meta_info"]
        assert meta["stages"][0]["type"] == "centerface" and meta["stages"][0]["options"]["input_size"] == 128
    failures = json.loads((out / "failures.json").read_text())
    assert sorted(failures) == dataset["corrupt"]
    assert all(f["attempts"] == 1 and f["error"] and f["path"].endswith(".mp4") for f in failures.values())
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("clip_id,status") and len(rows) == 1 + len(dataset["good"]) + len(dataset["corrupt"]) + 1
    assert "| clips | ok | failed" in (out / "summary.md").read_text()
    (run,) = json.loads((out / "manifest.json").read_text())["runs"]
    assert run["status"] == "finished" and run["config_hash"] and run["code_version"] and run["end"]
    assert run["input"]["kind"] == "celebvhq" and run["totals"]["ok"] == len(dataset["good"])


def test_sigkill_half_way_then_resume_gives_identical_outputs(dataset, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "engine", "batch", "--config", str(dataset["config"]), "--celebvhq",
           str(dataset["root"]), "--out", str(out), "--workers", "1", "--batch-size", "4", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "clips").glob("*.npz"))) >= 3:
                break
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and its decode workers, mid-run
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_at_kill = len(list((out / "clips").glob("*.npz")))
    assert 0 < done_at_kill < len(dataset["good"]), "the kill should land half-way"
    # what an interrupted write leaves, plus a damaged result file: both must be redone, not trusted
    (out / "clips" / f".{dataset['good'][-1]}.npz.99999.tmp").write_bytes(b"partial")
    victim = next((out / "clips").glob("*.npz"))
    victim.write_bytes(victim.read_bytes()[:100])

    totals = run_batch(dataset["config"], list_celebvhq(dataset["root"]), out, BatchOptions(workers=2, progress=False))
    assert totals["ok"] == len(dataset["good"]) - done_at_kill + 1 and totals["done"] == done_at_kill - 1
    assert npz_bytes(out) == npz_bytes(reference["out"])  # byte-identical, no duplicates
    assert not list(out.rglob("*.tmp"))
    assert sorted(json.loads((out / "failures.json").read_text())) == dataset["corrupt"]
    assert len(json.loads((out / "manifest.json").read_text())["runs"]) == 2


def test_rerun_skips_and_retry_failed_retries(tmp_path):
    clips = tmp_path / "clips"
    for name in ("a", "b"):
        make_clip(clips / f"{name}.mp4", frames=6, size=(128, 96))
    make_corrupt_file(clips / "c.mp4")
    config = tmp_path / "batch.toml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    opts = BatchOptions(workers=1, progress=False)
    first = run_batch(config, list_files(str(clips)), out, opts)
    assert (first["ok"], first["failed"]) == (2, 1)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "clips").glob("*.npz")}

    make_clip(clips / "c.mp4", frames=6, size=(128, 96))  # the bad clip gets fixed
    again = run_batch(config, list_files(str(clips)), out, opts)
    assert (again["ok"], again["done"], again["skipped_failed"]) == (0, 2, 1)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "clips").glob("*.npz")} == mtimes  # nothing rewritten

    retried = run_batch(config, list_files(str(clips)), out, BatchOptions(workers=1, progress=False, retry_failed=True))
    assert (retried["ok"], retried["done"], retried["failed"]) == (1, 2, 0)
    assert json.loads((out / "failures.json").read_text()) == {}
    assert validate_clip(out / "clips" / "c.npz") is not None


def test_clip_listing(tmp_path, dataset):
    make_clip(tmp_path / "x" / "same.mp4", frames=2, size=(64, 64))
    make_clip(tmp_path / "y" / "same.mp4", frames=2, size=(64, 64))
    listed = list_files(str(tmp_path / "*" / "*.mp4"))
    assert [c.clip_id for c in listed.clips] == ["x__same.mp4", "y__same.mp4"]  # unique ids for equal stems
    with pytest.raises(DatasetError, match="celebvhq_info.json not found"):
        list_celebvhq(tmp_path)
    with pytest.raises(DatasetError, match="no video files"):
        list_files(str(tmp_path / "*.nothing"))
    celeb = list_celebvhq(dataset["root"])
    assert celeb.missing == dataset["missing"] and celeb.source["clips_dir"].endswith("processed")


# ------------------------------------------------------------------ the model is part of the resume key


def _changed_weights_bundle(src: Path, dst: Path) -> Path:
    """A copy of bundle ``src`` whose ONNX weights differ slightly (manifest updated: a valid new bundle)."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from engine.bundle import sha256_file

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest weight tensor
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.asarray(1.01, numpy_helper.to_array(init).dtype),
                                          init.name))
    onnx.save(model, str(dst / "model.onnx"))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = {"sha256": sha256_file(dst / "model.onnx"), "bytes": (dst / "model.onnx").stat().st_size}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_results_record_the_model_and_a_new_model_is_redone(tmp_path, caplog):
    import shutil

    from engine.assets import DEFAULT_BUNDLE_NAME, default_bundle
    from engine.batch.inference import bundle_identity

    clips = tmp_path / "clips"
    for name in ("a", "b"):
        make_clip(clips / f"{name}.mp4", frames=4, size=(128, 96))
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle(), bundle)
    config = tmp_path / "batch.toml"
    config.write_text(CONFIG + '\n[[stages]]\ntype = "landmarks"\nbundle = "bundle"\nbackend = "onnxruntime"\n')
    out, opts = tmp_path / "out", BatchOptions(workers=1, progress=False)
    first = run_batch(config, list_files(str(clips)), out, opts)
    assert first["ok"] == 2
    old = bundle_identity(bundle)
    with np.load(out / "clips" / "a.npz") as z:
        meta = read_meta(z)
        before = z["landmarks_2d"].copy()
    (model,) = meta["models"]
    assert model == {"stage": "stages[1]", "option": "bundle", "path": str(bundle), **old}
    assert model["name"] == DEFAULT_BUNDLE_NAME and len(model["sha256"]) == 64 and meta["model_hash"]
    assert json.loads((out / "manifest.json").read_text())["runs"][0]["models"] == [model]
    assert run_batch(config, list_files(str(clips)), out, opts)["done"] == 2  # same model: nothing to redo

    shutil.rmtree(bundle)
    _changed_weights_bundle(default_bundle(), bundle)  # new weights at the same path, same options
    new = bundle_identity(bundle)
    assert new["sha256"] != old["sha256"]
    with caplog.at_level("WARNING"):
        again = run_batch(config, list_files(str(clips)), out, opts)
    assert (again["ok"], again["done"]) == (2, 0)
    assert (f"2 existing result file(s) were made with another model (stages[1] {DEFAULT_BUNDLE_NAME} sha256 "
            f"{old['sha256'][:12]}; now stages[1] {DEFAULT_BUNDLE_NAME} sha256 {new['sha256'][:12]}): redoing them") in caplog.text
    with np.load(out / "clips" / "a.npz") as z:
        assert read_meta(z)["models"][0]["sha256"] == new["sha256"]
        assert not np.array_equal(z["landmarks_2d"], before)  # really the new weights' results

    # weights replaced without a new manifest: not silently used, the job stops naming the file
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:-4] + b"\0\0\0\0")
    (out / "clips" / "a.npz").unlink()
    with pytest.raises(RuntimeError, match=r"model\.onnx: sha256 differs from manifest\.json"):
        run_batch(config, list_files(str(clips)), out, opts)


def _strip_model_record(path: Path) -> None:
    """Rewrite a result as one from before results recorded their models."""
    from engine.batch.output import encode_meta, write_npz

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
        meta = read_meta(z)
    del meta["models"], meta["model_hash"]
    arrays["meta_json"] = encode_meta(meta)
    write_npz(path, arrays)


def test_older_results_without_a_model_record(tmp_path, caplog):
    from engine.assets import DEFAULT_BUNDLE_NAME

    # a job that loads no model bundle (detector only) keeps them; one that does redoes them
    clips = tmp_path / "clips"
    make_clip(clips / "a.mp4", frames=3, size=(128, 96))
    config = tmp_path / "batch.toml"
    config.write_text(CONFIG)
    out, opts = tmp_path / "out", BatchOptions(workers=1, progress=False)
    run_batch(config, list_files(str(clips)), out, opts)
    _strip_model_record(out / "clips" / "a.npz")
    assert run_batch(config, list_files(str(clips)), out, opts)["done"] == 1

    config.write_text(CONFIG + '\n[[stages]]\ntype = "landmarks"\nbackend = "onnxruntime"\n')  # the default bundle
    out = tmp_path / "out2"
    run_batch(config, list_files(str(clips)), out, opts)
    _strip_model_record(out / "clips" / "a.npz")
    with caplog.at_level("WARNING"):
        assert run_batch(config, list_files(str(clips)), out, opts)["ok"] == 1
    assert ("1 existing result file(s) were made with another model (models not recorded (an older result); "
            f"now stages[1] {DEFAULT_BUNDLE_NAME} sha256") in caplog.text
