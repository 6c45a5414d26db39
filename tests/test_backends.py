"""Landmark backends: onnxruntime vs torch CPU agreement, device-side crops, auto selection, errors.

Tolerance: the bundle's ``model.onnx`` is fp32 while ``model.safetensors`` holds fp16 weights, so the
two backends differ by the weights' rounding, not by the runtimes: landmarks_2d agree within 1e-3 of
the crop side (0.032 px on the 32 px test model; measured ~0.008 px), rotation within 1e-4,
3D landmarks and translation within 0.1 mm.
"""

import numpy as np
import pytest

from engine.bundle import load_bundle
from engine.crop import box_factor, crop_matrix, roi_from_box, warp_crop
from landmark_bundle import tiny_bundle
from plugins.landmarks.backends import BackendError, create_backend, resolve_auto
from plugins.landmarks.backends.tensorrt_backend import check_compatible, read_engine_manifest

torch = pytest.importorskip("torch")
from plugins.landmarks.backends.torch_backend import buckets, crop_batch  # noqa: E402

BOXES = ([150, 60, 280, 220], [40, 30, 110, 120], [300, 100, 330, 135], [0, 0, 360, 300], [-20, 200, 60, 290])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(tiny_bundle(tmp_path_factory))


@pytest.fixture(scope="module")
def image():
    from skimage.data import astronaut

    return np.ascontiguousarray(astronaut()[:300, :360])


def _crops(bundle, image):
    Ms = [crop_matrix(roi_from_box(b), bundle.input_size) for b in BOXES]
    return Ms, np.stack([warp_crop(image, M, bundle.input_size) for M in Ms])


def test_onnxruntime_and_torch_cpu_agree(bundle, image):
    _, crops = _crops(bundle, image)
    x = bundle.preprocess(crops)
    ort_out = create_backend(bundle, "onnxruntime", "cpu").infer(x)
    torch_out = create_backend(bundle, "torch", "cpu").infer(x)
    S = bundle.input_size
    for name in ("landmarks_2d", "landmarks_3d", "rotation", "translation", "confidence"):
        assert ort_out[name].shape == torch_out[name].shape and ort_out[name].shape[0] == len(BOXES)
        assert np.isfinite(ort_out[name]).all()
    assert np.abs(ort_out["landmarks_2d"] - torch_out["landmarks_2d"]).max() <= 1e-3 * S
    tolerances = {"rotation": 1e-4, "translation": 1e-2, "landmarks_3d": 1e-2, "confidence": 1e-3}  # cm: 0.1 mm
    for name, atol in tolerances.items():
        np.testing.assert_allclose(torch_out[name], ort_out[name], rtol=1e-3, atol=atol, err_msg=name)


def test_chunking_gives_the_same_rows(bundle, image):
    _, crops = _crops(bundle, image)
    x = bundle.preprocess(crops)
    whole = create_backend(bundle, "onnxruntime", max_batch=8).infer(x)
    chunked = create_backend(bundle, "onnxruntime", max_batch=2).infer(x)
    np.testing.assert_allclose(chunked["landmarks_2d"], whole["landmarks_2d"], atol=1e-4)


def test_device_crop_matches_warp_crop(bundle, image):
    Ms, crops = _crops(bundle, image)
    t = torch.from_numpy(image).permute(2, 0, 1).float()
    got = crop_batch([t], [(0, M) for M in Ms], bundle.input_size).permute(0, 2, 3, 1).numpy()
    diff = np.abs(got - crops.astype(np.float32))
    assert diff.max() <= 1.0 and diff.mean() < 0.05  # rounding of .5 values only (incl. the >2x box filter)
    backend = create_backend(bundle, "torch", "cpu")
    direct = backend.infer_crops([image], [(0, M) for M in Ms])
    ref = backend.infer(bundle.preprocess(crops))
    assert np.abs(direct["landmarks_2d"] - ref["landmarks_2d"]).max() < 0.02


def test_device_box_filter_rounds_like_warp_crop(image):
    # downscaled 2x to 6x: the device crop's block means are rounded as OpenCV rounds warp_crop's
    size = 24
    for factor in (2, 3, 4, 5, 6):
        side = size * (2 * factor + 0.5)
        M = crop_matrix([3.3, 1.7, 3.3 + side, 1.7 + side], size)
        assert box_factor(np.linalg.inv(M)) == factor
        ref = warp_crop(image, M, size).astype(np.float32)
        t = torch.from_numpy(image).permute(2, 0, 1).float()
        got = crop_batch([t], [(0, M)], size)[0].permute(1, 2, 0).numpy()
        diff = np.abs(got - ref)
        assert diff.max() <= 1.0 and diff.mean() < 0.02, (factor, diff.mean())


def test_auto_and_errors(bundle, tmp_path):
    if not torch.cuda.is_available():
        assert resolve_auto(bundle, None, None) == ("onnxruntime", "cpu")
        assert create_backend(bundle, "auto").name == "onnxruntime"
        with pytest.raises(BackendError, match="no CUDA GPU"):
            create_backend(bundle, "torch", "cuda")
    assert resolve_auto(bundle, "cpu", None) == ("onnxruntime", "cpu")
    with pytest.raises(BackendError, match="fp32"):
        create_backend(bundle, "onnxruntime", "cpu", precision="fp16")
    with pytest.raises(BackendError, match="CUDA"):
        create_backend(bundle, "torch", "cpu", precision="bf16")
    assert buckets(32) == [1, 2, 4, 8, 16, 32] and buckets(24) == [1, 2, 4, 8, 16, 24]


def test_tensorrt_missing_package_or_engine_is_a_clear_error(bundle, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match=r"pip install \.\[tensorrt\]"):
            create_backend(bundle, "tensorrt", engine_dir=tmp_path)
    with pytest.raises(BackendError, match="training.build_engine"):
        read_engine_manifest(tmp_path)


def test_tensorrt_engine_for_another_gpu_or_version_is_refused():
    from engine.trt_manifest import EngineManifest, profile_for

    ref = {"file": "model.engine", "sha256": "0" * 64, "bytes": 1}
    manifest = EngineManifest(
        tensorrt_version="10.9.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), precision="fp16",
        profile=profile_for(128, 32), inputs=["image"], outputs=["landmarks_2d"], engine=ref, onnx=ref,
        source_bundle={"path": "b", "name": "b", "manifest_sha256": "0" * 64},
    )
    check_compatible(manifest, "10.9.0", "NVIDIA H100 80GB HBM3", (9, 0))
    with pytest.raises(BackendError, match="TensorRT 10.9.0.*10.13.0.*training.build_engine"):
        check_compatible(manifest, "10.13.0", "NVIDIA H100 80GB HBM3", (9, 0))
    with pytest.raises(BackendError, match="NVIDIA L4"):
        check_compatible(manifest, "10.9.0", "NVIDIA L4", (8, 9))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("fp16", 2e-2), ("bf16", 5e-2)])
def test_cuda_torch_agrees_with_cpu(bundle, image, precision, tol):
    Ms, crops = _crops(bundle, image)
    x = bundle.preprocess(crops)
    ref = create_backend(bundle, "onnxruntime", "cpu").infer(x)
    gpu = create_backend(bundle, "torch", "cuda", precision=precision, max_batch=4)
    S = bundle.input_size
    for out in (gpu.infer(x), gpu.infer_crops([image], [(0, M) for M in Ms])):  # graphs: 5 faces = 4 + 1
        assert np.abs(out["landmarks_2d"] - ref["landmarks_2d"]).max() <= tol * S
        np.testing.assert_allclose(out["rotation"], ref["rotation"], atol=tol * 10)
