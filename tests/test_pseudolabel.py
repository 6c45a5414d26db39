"""The pseudo-label writer: MF samples from generated clips, resume after interruption, reader round trip."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from training.dataset import KIND_MF, ShardReader, encode_sample, iter_samples, validate_sample
from training.pseudolabel import PseudoLabelConfig, run

REPO = Path(__file__).resolve().parent.parent


def write_clip(path: Path, image: np.ndarray, frames: int, size: int = 256, seed: int = 0) -> None:
    """A real H.264 clip: a window sliding over a photo (camera pan), encoded with PyAV."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        x, y = (w - size) // 2, (h - size) // 2 - 40
        for _ in range(frames):
            x = int(np.clip(x + rng.integers(-4, 5), 0, w - size))
            y = int(np.clip(y + rng.integers(-4, 5), 0, h - size))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[y : y + size, x : x + size]), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def clips(shared, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    astronaut = np.asarray(Image.open(shared / "assets" / "images" / "skimage_astronaut.png").convert("RGB"))
    write_clip(folder / "a_pan.mp4", astronaut, 12, seed=1)
    write_clip(folder / "b_pan.mp4", astronaut, 8, seed=2)
    write_clip(folder / "pyfeat_single_face.mp4", astronaut, 5, seed=3)  # held out by default
    (folder / "c_corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    return folder


def config(out: Path, clips: Path, **kw) -> PseudoLabelConfig:
    args = dict(out=out, identities=0, mf_clips=clips, mf_every=2, shard_size=3, image_size=96, workers=1)
    return PseudoLabelConfig(**(args | kw))


def cli(cfg: PseudoLabelConfig) -> list[str]:
    return [sys.executable, "-m", "training.pseudolabel", "--out", str(cfg.out), "--identities", str(cfg.identities),
            "--mf-clips", str(cfg.mf_clips), "--mf-every", str(cfg.mf_every), "--shard-size", str(cfg.shard_size),
            "--image-size", str(cfg.image_size), "--workers", str(cfg.workers)]


def samples_by_key(path: Path) -> dict[str, dict]:
    out = {}
    for s in iter_samples(path):
        assert s["__key__"] not in out, f"duplicate sample {s['__key__']}"
        out[s["__key__"]] = s
    return out


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ds"
    run(config(out, clips), progress=False)
    return out


def test_mf_dataset_counts_and_reader(reference):
    m = json.loads((reference / "manifest.json").read_text())
    c = m["counts"]
    assert m["complete"] and m["format_version"] == 1
    # a_pan: 12 frames -> 6 sampled (shards of 3: 3+3); b_pan: 8 -> 4 (3+1); corrupt skipped; held-out excluded.
    assert c["clips"] == 3 and c["clips_skipped"] == 1 and "c_corrupt.mp4" in m["skipped_clips"][0]["clip"]
    assert not any("pyfeat_single_face" in clip for clip in m["mf_clips"])
    assert c["shards_planned"] == c["shards_done"] == 4
    assert c["mf_samples"] + c["mf_frames_without_face"] == 10
    assert c["mf_samples"] >= 9  # the astronaut is found in (nearly) every frame
    reader = ShardReader(reference, verify=True)
    samples = samples_by_key(reference)
    assert len(reader) == len(samples) == c["samples"] == sum(s["samples"] for s in m["shards"])
    s = next(iter(samples.values()))
    assert s["image"].shape == (96, 96, 3) and s["image"].dtype == np.uint8
    assert int(s["kind"]) == KIND_MF and s["landmarks_2d"].shape == (68, 2) and s["visible"].all()
    assert set(s) >= {"box", "confidence", "identity"} and "landmarks_3d" not in s
    # Labels sit on the face: the region is ~3 face boxes wide, so the landmarks are near its centre.
    lm = np.stack([v["landmarks_2d"] for v in samples.values()])
    assert (np.abs(lm.mean(axis=1) - 48) < 15).all()
    assert ((s["confidence"] > 0) & (s["confidence"] <= 1)).all()


def test_resume_after_kill_and_damage(reference, clips, tmp_path):
    out = tmp_path / "ds"
    cfg = config(out, clips)
    proc = subprocess.Popen(cli(cfg), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while not (out / "shards" / "shard-00000.tar").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-way: at least one shard done, later ones missing or partial
    proc.wait()
    assert (out / "shards" / "shard-00000.tar").exists()
    assert len(list((out / "shards").glob("*.tar"))) < 4, "the run finished before it could be interrupted"
    m = json.loads((out / "manifest.json").read_text())
    # Extra damage: a stale temp file for a later shard.
    (out / "shards" / "shard-00003.tar.tmp").write_bytes(b"partial")
    run(cfg, progress=False)
    assert not list((out / "shards").glob("*.tmp"))
    ref, got = samples_by_key(reference), samples_by_key(out)
    assert sorted(ref) == sorted(got)  # nothing lost, nothing duplicated
    for key in ref:
        # same labels; multi-threaded inference (ONNX Runtime, torch) may differ in the last float bits
        np.testing.assert_allclose(got[key]["landmarks_2d"], ref[key]["landmarks_2d"], atol=1e-2)
    m_ref = json.loads((reference / "manifest.json").read_text())
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["counts"] == m_ref["counts"]
    # Deleting a finished shard redoes exactly that shard, byte for byte.
    sha = {s["file"]: s["sha256"] for s in m["shards"]}
    (out / "shards" / "shard-00001.tar").unlink()
    run(cfg, progress=False)
    again = json.loads((out / "manifest.json").read_text())
    assert {s["file"]: s["sha256"] for s in again["shards"]} == sha
    # Other settings in the same folder are refused, not mixed in.
    with pytest.raises(SystemExit, match="other settings"):
        run(config(out, clips, mf_every=3), progress=False)


def test_sample_validation_names_the_bad_key():
    good = {"kind": 1, "identity": 3, "box": np.zeros(4), "landmarks_2d": np.zeros((68, 2)),
            "visible": np.ones(68, bool), "confidence": np.ones(68)}
    assert validate_sample(good)["kind"].dtype == np.int8
    with pytest.raises(ValueError, match="'landmarks_2d'"):
        validate_sample(good | {"landmarks_2d": np.zeros((5, 2))})
    with pytest.raises(ValueError, match="'landmarks_3d'"):
        validate_sample(good | {"kind": 0})
    with pytest.raises(ValueError, match="uint8"):
        encode_sample(np.zeros((8, 8, 3), np.float32), good)


def test_mv_samples_from_the_generator(tmp_path):
    """One identity end to end: 41 rig renders -> detector + teacher -> lifting -> 2 labelled renders."""
    from engine.geometry import project
    from training.masks import landmark_visibility

    out = tmp_path / "mv"
    cfg = PseudoLabelConfig(out=out, identities=1, renders_per_identity=2, rig_size=128, image_size=128,
                            shard_size=2, workers=1, seed=3)
    m = run(cfg, progress=False)
    c = m["counts"]
    assert c["identities_done"] == 1 and c["mv_samples"] + 2 * c["identities_rejected"] == 2
    assert c["identities_rejected"] == 0, m["rejected_identities"]
    samples = list(iter_samples(out))
    assert len(samples) == 2 and {int(s["identity"]) for s in samples} == {3_000_000}
    for s in samples:
        assert int(s["kind"]) == 0 and s["image"].shape == (128, 128, 3)
        cam = s["landmarks_3d"] @ s["R"].T + s["t"]
        np.testing.assert_allclose(s["landmarks_2d"], project(cam, s["K"]), atol=1e-3)
        np.testing.assert_array_equal(s["visible"], landmark_visibility(s["R"]))
        assert (s["confidence"] == 1).all()
        true = s["landmarks_3d_true"]
        iod = np.linalg.norm(true[36] - true[45])
        err = np.linalg.norm(s["landmarks_3d"] - true, axis=1) / iod
        assert err[17:].mean() < 0.12, err  # inner face; the contour follows the teacher's definition
        box = s["box"]
        inside = (s["landmarks_2d"][:, 0] > box[0] - 0.2 * (box[2] - box[0])) & (s["landmarks_2d"][:, 0] < box[2] + 0.2 * (box[2] - box[0]))
        assert inside[s["visible"]].all()
    np.testing.assert_array_equal(samples[0]["landmarks_3d"], samples[1]["landmarks_3d"])  # one lifted label
