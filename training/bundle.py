"""Export a training checkpoint to a model bundle (docs/DESIGN.md, loaded by engine/bundle.py).

``python -m training.bundle runs/x/checkpoints/last.pt models/x`` writes
- ``model.safetensors``: fp16 weights (the torch backend casts them back as it likes);
- ``model.onnx``: fp32 graph with fp16-stored weights (``engine/onnx_weights.py``), opset 17, dynamic batch
  axis, verified against torch (with the same fp16-rounded weights) with onnxruntime;
- ``manifest.json``: version, architecture, input convention, landmarks, normals template, outputs,
  training provenance, validation figures and the files' sha256.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from safetensors.torch import save_file

from engine.bundle import BUNDLE_VERSION, load_bundle, sha256_file
from engine.crop import CropConvention
from engine.landmarks68 import NAMES, REGIONS
from engine.onnx_weights import store_weights_fp16
from plugins.landmarks.transformer import OUTPUT_NAMES, LandmarkTransformerConfig, TupleOutputs, create_model

log = logging.getLogger(__name__)

OPSET = 17
ONNX_ATOL = 1e-4




def output_shapes(cfg: LandmarkTransformerConfig) -> dict[str, list]:
    shapes = {
        "landmarks_3d": ["batch", 68, 3], "rotation": ["batch", 3, 3], "translation": ["batch", 3],
        "landmarks_2d": ["batch", 68, 2], "scale_tril": ["batch", 68, 2, 2], "uncertainty": ["batch", 68],
        "confidence": ["batch", 68],
    }
    return {name: shapes[name] for name in OUTPUT_NAMES}


def round_to_fp16(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """In place: the model's weights -> their fp16 values (what a bundle stores); returns the fp16 state."""
    half = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in half.items()})
    return half


def export_onnx(model: torch.nn.Module, cfg: LandmarkTransformerConfig, path: Path, fp16_weights: bool = False) -> float:
    """Export with a dynamic batch axis; returns the largest |onnx - torch| on a batch of 3.
    ``fp16_weights``: store the weights fp16 (the model's weights must be fp16 values: ``round_to_fp16``)."""
    wrapped = TupleOutputs(model).eval()
    example = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    axes = {name: {0: "batch"} for name in ("image", *OUTPUT_NAMES)}
    # The TorchScript exporter: fast, and handles this model (incl. SDPA) at opset 17. With fp16 storage the
    # BatchNorms stay separate nodes (PRESERVE; the model is in eval mode): folded into the conv weights
    # before rounding, they would no longer be the fp16 weights torch runs. ONNX Runtime and TensorRT fuse
    # them at load.
    mode = torch.onnx.TrainingMode.PRESERVE if fp16_weights else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(
        wrapped, (example,), str(path), opset_version=OPSET, input_names=["image"],
        output_names=list(OUTPUT_NAMES), dynamic_axes=axes, dynamo=False, training=mode,
    )
    if fp16_weights:
        graph = onnx.load(str(path))
        store_weights_fp16(graph)
        onnx.save(graph, str(path))
    check = torch.randn(3, 3, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {"image": check.numpy()})
    with torch.no_grad():
        ref = wrapped(check)
    # relative to each value's size (plus one): 2D landmarks are crop pixels (~0..S), where float summation
    # order alone moves the last digits; an absolute bound would fail a correct export of a larger value
    err = max(float((np.abs(g - r.numpy()) / (1.0 + np.abs(r.numpy()))).max()) for g, r in zip(got, ref))
    if err > ONNX_ATOL:
        raise RuntimeError(f"{path}: ONNX differs from torch by {err:.2e} relative (> {ONNX_ATOL})")
    return err


def export_bundle(checkpoint: str | Path, out_dir: str | Path, name: str | None = None) -> Path:
    """Checkpoint from training/train.py -> bundle directory; returns ``out_dir``."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = LandmarkTransformerConfig.model_validate(ck["config"]["model"])
    model = create_model(cfg).eval()
    model.load_state_dict(ck["model"])
    out_dir.mkdir(parents=True, exist_ok=True)

    # Both files hold the same fp16 weights; the reference for the ONNX check is the torch model with them.
    half = round_to_fp16(model)
    weights = out_dir / "model.safetensors"
    save_file(half, str(weights))
    onnx_path = out_dir / "model.onnx"
    onnx_err = export_onnx(model, cfg, onnx_path, fp16_weights=True)

    from training.masks import normals_template

    manifest = {
        "bundle_version": BUNDLE_VERSION,
        "name": name or checkpoint.parent.parent.name,
        "model": {"architecture": "facelift_landmark_transformer", **cfg.model_dump(mode="json")},
        "input": {
            "name": "image", "size": cfg.img_size, "layout": "NCHW", "channels": "RGB",
            "scale": 1 / 255, "mean": list(cfg.mean), "std": list(cfg.std),
            "crop": CropConvention().as_dict(), "K0": cfg.k0().tolist(),
        },
        "landmarks": {"names": NAMES, "regions": {k: [v.start, v.stop] for k, v in REGIONS.items()}},
        "normals_template": np.asarray(normals_template(), dtype=float).round(6).tolist(),
        "outputs": output_shapes(cfg),
        "training": {
            "data_manifest_hash": ck.get("data_manifest_hash"), "steps": ck["step"],
            "hardware": ck.get("hardware"), "time_s": round(float(ck.get("elapsed_s", 0.0)), 1),
            "loss": ck["config"].get("loss"),
        },
        "validation": {**ck.get("validation", {}), "onnx_max_abs_diff": onnx_err},
        "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in (weights, onnx_path)},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    load_bundle(out_dir)  # the engine's validator must accept what we wrote
    log.info("bundle %s written (onnx vs torch max |diff| %.2e)", out_dir, onnx_err)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Export a training checkpoint to a model bundle")
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--name")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(export_bundle(args.checkpoint, args.out_dir, args.name))


if __name__ == "__main__":
    main()
