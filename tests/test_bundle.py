import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.numpy import load_file

from engine.bundle import BundleError, load_bundle
from engine.crop import crop_matrix, roi_from_box, warp_crop
from plugins.landmarks.transformer import OUTPUT_NAMES, create_model
from landmark_bundle import tiny_bundle

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory)


def test_bundle_files_and_manifest(bundle):
    b = load_bundle(bundle)
    m = b.manifest
    assert m.bundle_version == "1.0.0"
    assert set(m.files) == {"model.onnx", "model.safetensors"}
    assert m.input.size == 32 and np.asarray(m.input.K0).shape == (3, 3)
    assert b.normals.shape == (68, 3) and np.allclose(np.linalg.norm(b.normals, axis=1), 1, atol=1e-4)
    assert m.training["steps"] == 1 and len(m.training["data_manifest_hash"]) == 64
    assert {"mv_nme", "onnx_max_abs_diff"} <= set(m.validation)
    weights = load_file(str(b.weights_path))
    assert all(v.dtype == np.float16 for v in weights.values())
    graph = onnx.load(str(b.onnx_path)).graph  # fp32 graph, big weights stored fp16
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    big = [i for i in graph.initializer if np.prod(i.dims) >= 256]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)


def test_onnx_matches_torch_dynamic_batch(bundle):
    b = load_bundle(bundle)
    model = create_model({k: v for k, v in b.manifest.model.items() if k != "architecture"}).eval()
    # The reference is the bundle's own fp16 weights, which the ONNX file stores too.
    model.load_state_dict({k: torch.from_numpy(v).float() for k, v in load_file(str(b.weights_path)).items()})
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 140, 3), dtype=np.uint8)
    crops = np.stack([warp_crop(image, crop_matrix(roi_from_box(box), 32), 32)
                      for box in ([20, 20, 80, 90], [40, 30, 100, 100], [10, 5, 60, 60], [0, 0, 120, 120], [30, 30, 70, 70])])
    x = b.preprocess(crops)
    got = b.session().run(list(OUTPUT_NAMES), {"image": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    for name, g in zip(OUTPUT_NAMES, got):
        assert g.shape[0] == 5
        np.testing.assert_allclose(g, ref[name].numpy(), atol=1e-4, rtol=1e-4, err_msg=name)


def test_loader_rejects_wrong_major_and_bad_files(bundle, tmp_path):
    bad = tmp_path / "v2"
    shutil.copytree(bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["bundle_version"] = "2.0.0"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle_version 2.0.0 is not supported"):
        load_bundle(bad)
    manifest["bundle_version"] = "1.3.0"  # same major: accepted
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(bad).manifest.bundle_version == "1.3.0"
    (bad / "model.onnx").write_bytes(b"corrupt")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bad)
    del manifest["input"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="input"):
        load_bundle(bad)
    with pytest.raises(BundleError, match="manifest.json not found"):
        load_bundle(tmp_path / "nowhere")


def test_engine_loader_imports_neither_torch_nor_training(bundle):
    code = ("import sys, engine.bundle as b; b.load_bundle(sys.argv[1]).session(); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('training')]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code, str(bundle)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
