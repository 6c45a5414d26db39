"""fp32 vs int8 (Q/DQ) ONNX on CPU with onnxruntime: faces/s at batch 1 and 32, and accuracy deltas.

``python benchmarks/bench_int8.py [--bundle DIR] [--out DIR] [--seconds 5] [--dataset DIR]``

Without ``--bundle`` it uses the default bundle (engine.assets.default_bundle()) when it exists, else
an UNTRAINED ViT-Tiny-128 (training/configs/cpu_vit_tiny_128.toml) exported with training.bundle, so
the accuracy deltas then describe random weights only. Calibration and held-out crops come from
calibration/dataset.py: real video faces, and generator renders (with ground truth: the "GT NME change"
row) from the MV samples of a ``python -m training.pseudolabel`` folder given with ``--dataset``;
deltas are against PyTorch fp32.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from calibration.dataset import CropSetConfig, build_crop_sets
from calibration.qdq import QDQ_FILE, QuantConfig, calibrate
from engine.assets import REPO_ROOT, default_bundle
from engine.bundle import load_bundle
from plugins.landmarks.transformer import LandmarkTransformerConfig, create_model
from training.build_engine import FP32_ONNX, compare_outputs, load_reference_model, onnx_outputs, torch_outputs
from training.bundle import export_bundle, export_onnx


def untrained_bundle(out: Path) -> Path:
    raw = tomllib.loads((REPO_ROOT / "training" / "configs" / "cpu_vit_tiny_128.toml").read_text())
    cfg = LandmarkTransformerConfig.model_validate(raw["model"])
    torch.manual_seed(0)
    model = create_model(cfg)
    ckpt = out / "run" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"config": {"model": cfg.model_dump(mode="json"), "loss": raw.get("loss")},
                "model": model.state_dict(), "step": 0, "hardware": "untrained"}, ckpt)
    return export_bundle(ckpt, out / "bundle", name="untrained_vit_tiny_128")


def faces_per_s(path: Path, x: np.ndarray, batch: int, seconds: float) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"image": np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))}
    for _ in range(3):
        session.run(None, feed)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(None, feed)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle")
    p.add_argument("--out", help="where the ONNX pair goes (default: a temp dir)")
    p.add_argument("--seconds", type=float, default=5.0, help="timing per configuration")
    p.add_argument("--method", choices=["entropy", "percentile"], default=QuantConfig().method)
    p.add_argument("--dataset", nargs="*", default=[], type=Path, metavar="DIR",
                   help="pseudo-label dataset folder(s): synthetic crops from their MV samples (default: none)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_int8."))
    out = Path(args.out) if args.out else tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir = Path(args.bundle) if args.bundle else default_bundle()
    untrained = not (bundle_dir / "manifest.json").is_file()
    if untrained:
        bundle_dir = untrained_bundle(tmp)
    bundle = load_bundle(bundle_dir)
    model = load_reference_model(bundle)
    export_onnx(model, model.cfg, out / FP32_ONNX)

    calib, heldout = build_crop_sets(CropSetConfig(frames_per_video=8, renders=24, num_calibration=96,
                                                   dataset=args.dataset), bundle.input_size)
    calibrate(out / FP32_ONNX, bundle.preprocess(calib.crops), out, QuantConfig(method=args.method))
    x = bundle.preprocess(heldout.crops)
    ref = torch_outputs(model, x)
    figs = {name: compare_outputs(ref, onnx_outputs(out / f, x), heldout) for name, f in (("fp32", FP32_ONNX), ("int8", QDQ_FILE))}
    speed = {(name, b): faces_per_s(out / f, x, b, args.seconds) for name, f in (("fp32", FP32_ONNX), ("int8", QDQ_FILE)) for b in (1, 32)}

    print(f"bundle: {bundle.manifest.name} ({bundle.input_size}px){'  -- UNTRAINED weights: accuracy deltas describe random weights only' if untrained else ''}")
    print(f"held-out crops: {len(heldout)} ({int(heldout.is_real.sum())} real, {int((~heldout.is_real).sum())} synthetic); "
          f"calibration crops: {len(calib)}; method {args.method}; onnxruntime {ort.__version__} CPU, {ort.get_device()}")
    print(f"{'':<24}{'fp32':>12}{'int8 Q/DQ':>12}{'ratio':>10}")
    for b in (1, 32):
        f, i = speed[("fp32", b)], speed[("int8", b)]
        print(f"{f'faces/s batch {b}':<24}{f:>12.1f}{i:>12.1f}{i / f:>10.2f}")
    for key, label in (("nme_delta", "NME delta % vs torch"), ("pose_delta_deg", "pose delta deg"),
                       ("max_landmark_px", "max landmark px"), ("gt_nme_change", "GT NME change %")):
        if key in figs["int8"]:
            print(f"{label:<24}{figs['fp32'][key]:>12.4f}{figs['int8'][key]:>12.4f}{'':>10}")


if __name__ == "__main__":
    main()
