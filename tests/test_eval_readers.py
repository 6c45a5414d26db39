"""Evaluation-set readers on small stand-in folders written in each dataset's real layout."""

import json

import numpy as np
import pytest
import scipy.io
from PIL import Image

from clips import make_clip
from engine.geometry import FRONTAL, rotation_from_euler
from training.evaluation.mesh import upsample
from training.evaluation.nmlc import MeshVertices, nmlc
from training.evaluation.readers import (
    AFLW2000Reader,
    CelebVHQReader,
    DAD3DHeadsReader,
    DatasetLayoutError,
    MultifaceReader,
)

W, H = 320, 240
K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])


def grid(n=6, size=10.0):
    xs = np.linspace(-size / 2, size / 2, n)
    x, y = np.meshgrid(xs, xs)
    v = np.stack([x.ravel(), y.ravel(), np.exp(-(x**2 + y**2) / 20).ravel()], 1).astype(np.float32)
    i = np.arange(n * n).reshape(n, n)
    a, b, c, d = i[:-1, :-1].ravel(), i[:-1, 1:].ravel(), i[1:, :-1].ravel(), i[1:, 1:].ravel()
    return v, np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])


def pinhole(r, t, pts):
    h = (pts @ r.T + t) @ K.T
    return h[:, :2] / h[:, 2:]


def save_png(path, w=W, h=H):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def write_obj(path, v, f):
    lines = [f"v {a} {b} {c}" for a, b, c in v] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- DAD-3DHeads
def gl_matrices(r_cv, t_cv):
    """OpenGL model-view + a projection whose clip coords divide to pixels with y flipped (DAD)."""
    mv = np.eye(4)
    mv[:3, :3], mv[:3, 3] = FRONTAL @ r_cv, FRONTAL @ t_cv
    f, cx, cy = K[0, 0], K[0, 2], K[1, 2]
    p = np.array([[f, 0, -cx, 0], [0, f, -(H - cy), 0], [0, 0, -1.0, -0.2], [0, 0, -1, 0]])
    return mv, p


@pytest.fixture
def dad_root(tmp_path):
    v, f = grid()
    split = tmp_path / "DAD-3DHeadsDataset" / "val"
    meta, truth = [], {}
    for j, key in enumerate(["a1", "b2", "c3"]):
        r = rotation_from_euler(10 * j - 10, 5, 0)
        t = np.array([0.0, 0.0, 40.0 + j])
        mv, p = gl_matrices(r, t)
        verts = v * (1 + 0.05 * j)
        save_png(split / "images" / f"{key}.png")
        (split / "annotations").mkdir(exist_ok=True)
        (split / "annotations" / f"{key}.json").write_text(json.dumps(
            {"vertices": verts.tolist(), "model_view_matrix": mv.tolist(), "projection_matrix": p.tolist()}))
        meta.append({"item_id": key, "annotation_path": f"annotations/{key}.json", "img_path": f"images/{key}.png",
                     "bbox": [50 + j, 40, 200, 150],
                     "attributes": {"quality": "hq", "gender": ["female", "male", "undefined"][j],
                                    "expression": True, "age": "young", "occlusions": False,
                                    "pose": "front", "standard light": j != 1}})
        truth[key] = (r, t, verts)
    (split / "val.json").write_text(json.dumps(meta))
    np.save(tmp_path / "faces.npy", f)
    return tmp_path, truth


def test_dad3d_reader_projects_like_the_dataset(dad_root):
    root, truth = dad_root
    emb = root / "lmk.npz"
    np.savez(emb, vertex_ids=np.arange(68) % 36)
    reader = DAD3DHeadsReader(root, "val", faces=root / "faces.npy", landmark_embedding=emb)
    samples = list(reader)
    assert [s.key for s in samples] == ["a1", "b2", "c3"]
    for s in samples:
        r, t, verts = truth[s.key]
        np.testing.assert_allclose(s.project(s.vertices), pinhole(r, t, verts), atol=1e-3)
        np.testing.assert_allclose(s.rotation, r, atol=1e-6)
        np.testing.assert_allclose(s.landmarks_2d, pinhole(r, t, verts[np.arange(68) % 36]), atol=1e-3)
    assert samples[0].box.tolist() == [50, 40, 250, 190]
    assert samples[1].attributes == {"quality": "hq", "gender": "male", "expression": "true", "age": "young",
                                     "occlusion": "false", "pose": "front", "light": "false"}
    assert reader.attribute_columns(samples)["gender"] == ["female", "male", "undefined"]
    # Plugs into NMLC: predictions on the GT landmark vertices give 0 on the upsampled mesh.
    up = upsample(reader.faces(), 36, 1)
    pred = np.stack([s.landmarks_2d for s in samples])
    res = nmlc(pred, np.stack([s.box for s in samples]), MeshVertices.from_samples(samples, up), k=8)
    assert res.value == pytest.approx(0.0, abs=1e-3)


def test_dad3d_reader_layout_errors(dad_root, tmp_path):
    root, _ = dad_root
    with pytest.raises(DatasetLayoutError, match="test.json") as err:
        DAD3DHeadsReader(root, "test")
    assert "annotations/<item_id>.json" in str(err.value)
    with pytest.raises(DatasetLayoutError, match=str(tmp_path / "nowhere")):
        DAD3DHeadsReader(tmp_path / "nowhere")
    (root / "DAD-3DHeadsDataset" / "val" / "annotations" / "b2.json").unlink()
    reader = DAD3DHeadsReader(root / "DAD-3DHeadsDataset")
    assert len(list(reader)) == 2 and "b2" in reader.skipped
    with pytest.raises(ValueError, match="faces="):
        reader.faces()


# ---------------------------------------------------------------- Multiface
def test_multiface_reader_subset_and_projection(tmp_path):
    v, f = grid()
    ent = tmp_path / "m--20180227--0000--6795937--GHS"
    cams = {"400002": (rotation_from_euler(0, 0, 0), np.array([0, 0, 900.0])),
            "400004": (rotation_from_euler(30, 0, 0), np.array([10, 0, 950.0])),
            "400055": (rotation_from_euler(-80, 0, 0), np.array([0, 0, 900.0]))}  # excluded camera
    ent.mkdir()
    with open(ent / "KRT", "w") as fh:
        for name, (r, t) in cams.items():
            fh.write(f"{name}\n")
            fh.writelines(" ".join(map(str, row)) + "\n" for row in K)
            fh.write("0 0 0 0 0\n")
            rt = np.hstack([FRONTAL @ r, (FRONTAL @ t)[:, None]])
            fh.writelines(" ".join(map(str, row)) + "\n" for row in rt)
            fh.write("\n")
    head_r, head_t = rotation_from_euler(0, 10, 0), np.array([5.0, -3.0, 20.0])
    frames = [f"{n:06d}" for n in range(102, 133)]  # 31 frames -> every 15th: 102, 117, 132
    for seq in ("E001_Neutral_Eyes_Open", "E002_Swallow"):
        md = ent / "tracked_mesh" / seq
        md.mkdir(parents=True)
        for fr in frames:
            (v * 10).astype(np.float32).tofile(md / f"{fr}.bin")
            np.savetxt(md / f"{fr}_transform.txt", np.hstack([head_r, head_t[:, None]]))
            for cam in cams:
                save_png(ent / "images" / seq / cam / f"{fr}.png", 16, 16)
        write_obj(md / f"{frames[0]}.obj", v * 10, f)
    (ent / "images" / "E001_Neutral_Eyes_Open" / "400004" / "000117.png").unlink()  # a missing image

    reader = MultifaceReader(tmp_path)
    samples = list(reader)
    keys = [s.key.split("/", 1)[1] for s in samples]
    assert keys == ["E001_Neutral_Eyes_Open/000102/400002", "E001_Neutral_Eyes_Open/000102/400004",
                    "E001_Neutral_Eyes_Open/000117/400002", "E001_Neutral_Eyes_Open/000132/400002",
                    "E001_Neutral_Eyes_Open/000132/400004"]
    assert len(reader.skipped) == 1 and len(reader.missing_sequences[ent.name]) == 5
    s = samples[1]
    r_c, t_c = FRONTAL @ cams["400004"][0], FRONTAL @ cams["400004"][1]
    world = (v * 10) @ head_r.T + head_t
    h = (world @ r_c.T + t_c) @ K.T
    np.testing.assert_allclose(s.project(s.vertices), h[:, :2] / h[:, 2:], rtol=1e-6)
    np.testing.assert_allclose(s.box, [*s.project(s.vertices).min(0), *s.project(s.vertices).max(0)], rtol=1e-5)
    assert s.attributes["sequence"] == "neutral_eyes_open" and s.attributes["camera"] == "400004"
    assert reader.faces().shape == f.shape
    with pytest.raises(DatasetLayoutError, match="KRT"):
        MultifaceReader(ent / "images")


# ---------------------------------------------------------------- AFLW2000-3D
def test_aflw2000_reader_original_and_reannotated(tmp_path):
    root = tmp_path / "AFLW2000"
    rng = np.random.default_rng(0)
    names = ["image00002", "image00004", "image00006"]
    yaws = [10.0, -45.0, 80.0]
    pts = []
    for name, yaw in zip(names, yaws):
        save_png(root / f"{name}.jpg", 450, 450)
        pt3d = np.vstack([rng.uniform(100, 300, (2, 68)), rng.uniform(-50, 50, (1, 68))])
        pts.append(pt3d)
        scipy.io.savemat(root / f"{name}.mat", {"pt3d_68": pt3d, "Pose_Para": np.array(
            [[np.radians(5), np.radians(yaw), 0.0, 200, 200, 0, 0.001]])})
    cfg = tmp_path / "test.configs"
    cfg.mkdir()
    re_pts = np.stack([p[:2] + 1.0 for p in pts])  # (3, 2, 68)
    np.save(cfg / "AFLW2000-3D-Reannotated.pts68.npy", re_pts)
    (cfg / "AFLW2000-3D_crop.list").write_text("\n".join(f"{n}.jpg" for n in names) + "\n")

    re = list(AFLW2000Reader(tmp_path))  # finds AFLW2000/ and ../test.configs
    assert [s.key for s in re] == names
    np.testing.assert_allclose(re[1].landmarks_2d, pts[1][:2].T + 1.0, rtol=1e-6)
    lm = re[1].landmarks_2d
    np.testing.assert_allclose(re[1].box, [*lm.min(0), *lm.max(0)])
    assert [s.attributes["yaw"] for s in re] == ["[0,30]", "(30,60]", "(60,90]"]
    assert re[2].extras["pose_deg"]["yaw"] == pytest.approx(80.0)
    orig = list(AFLW2000Reader(root, landmarks="original"))
    np.testing.assert_allclose(orig[0].landmarks_2d, pts[0][:2].T, rtol=1e-6)

    (cfg / "AFLW2000-3D-Reannotated.pts68.npy").unlink()
    with pytest.raises(DatasetLayoutError, match="AFLW2000-3D-Reannotated.pts68.npy"):
        AFLW2000Reader(root)
    with pytest.raises(DatasetLayoutError, match="image00002.jpg"):
        AFLW2000Reader(cfg, landmarks="original")


# ---------------------------------------------------------------- CelebV-HQ
def test_celebvhq_reader_clips_attributes_and_frames(tmp_path):
    info = {
        "meta_info": {"appearance_mapping": ["Blurry", "Male", "Young"], "action_mapping": ["blow", "talk"]},
        "clips": {
            "M2Ohb0FAaJU_1": {"ytb_id": "M2Ohb0FAaJU", "duration": {"start_sec": 81.62, "end_sec": 86.17},
                              "bbox": {"top": 0.0, "bottom": 0.88, "left": 0.19, "right": 0.69},
                              "attributes": {"appearance": [0, 1, 1], "action": [0, 1],
                                             "emotion": {"sep_flag": False, "labels": "neutral"}},
                              "version": "v0.1"},
            "_0tf2n3rlJU_0": {"ytb_id": "_0tf2n3rlJU", "duration": {"start_sec": 52.7, "end_sec": 56.1},
                              "bbox": {"top": 0.0, "bottom": 0.84, "left": 0.52, "right": 1.0},
                              "attributes": {"appearance": [1, 0, 1], "action": [1, 0],
                                             "emotion": {"sep_flag": True, "labels": [
                                                 {"emotion": "neutral", "start_sec": 0, "end_sec": 0.28},
                                                 {"emotion": "happy", "start_sec": 1.28, "end_sec": 3.28}]}},
                              "version": "v0.1"},
            "gone_0": {"ytb_id": "gone", "duration": {"start_sec": 0, "end_sec": 1}, "bbox": {},
                       "attributes": {}, "version": "v0.1"},
        },
    }
    (tmp_path / "celebvhq_info.json").write_text(json.dumps(info))
    make_clip(tmp_path / "35666" / "M2Ohb0FAaJU_1.mp4", frames=6, size=(64, 64))
    make_clip(tmp_path / "35666" / "_0tf2n3rlJU_0.mp4", frames=6, size=(64, 64))

    reader = CelebVHQReader(tmp_path)
    samples = list(reader)
    assert [s.key for s in samples] == ["M2Ohb0FAaJU_1", "_0tf2n3rlJU_0"]
    assert reader.missing_clips == ["gone_0"]
    a = samples[0].attributes
    assert a["emotion"] == "neutral" and a["appearance.Male"] == "true" and a["action.blow"] == "false"
    assert samples[1].attributes["emotion"] == "multiple"
    assert samples[0].extras["bbox_raw"]["right"] == 0.69
    frames = list(CelebVHQReader.frames(samples[0], every=2))
    assert [i for i, _ in frames] == [0, 2, 4] and frames[0][1].shape == (64, 64, 3)

    with pytest.raises(DatasetLayoutError, match="celebvhq_info.json"):
        CelebVHQReader(tmp_path / "35666")
    with pytest.raises(DatasetLayoutError, match="clips"):
        CelebVHQReader(tmp_path, clips_dir=tmp_path / "clips")
