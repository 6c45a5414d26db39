"""Export, validate, quantise and (when TensorRT is installed) build a TensorRT engine from a bundle.

``python -m training.build_engine --bundle models/x [--precision fp32|fp16|int8] [--max-batch 32]
[--opt-batch 8] [--out DIR] [--dataset DIR] [--max-nme-delta 1.0] [--max-pose-delta-deg 1.0]``

1. Re-exports ONNX from the bundle's weights (``model.safetensors`` cast to fp32; opset 17, dynamic
   batch axis, ``training.bundle.export_onnx``). The reference is the PyTorch model with those weights.
2. Builds crop sets (calibration/dataset.py): real faces (shared videos, CenterFace boxes, engine.crop)
   and, with ``--dataset DIR``, generator renders: the MV samples of a ``python -m training.pseudolabel``
   folder, with ground-truth landmarks (without it: real faces only, and a logged note); calibration
   and held-out crops come from disjoint videos / identities.
3. Validates every artefact against PyTorch on the held-out crops: max landmark difference (crop px),
   NME delta (% of the face size: mean landmark distance between artefact and PyTorch predictions,
   normalised per crop by sqrt(w h) of the detector box or ground-truth landmark box) and pose delta
   (geodesic angle between rotations, degrees); on renders also the change of NME against ground
   truth. Means over crops are checked against the thresholds; a failure exits with status 2.
4. int8: calibration/ writes the Q/DQ ONNX and ``calibration.cache``; the Q/DQ model is validated too.
5. With TensorRT and a CUDA GPU: builds ``model.engine`` (optimisation profile batch 1..max-batch),
   validates it the same way and writes ``engine_manifest.json`` (engine/trt_manifest.py). Without
   TensorRT it stops after the validated ONNX and says what to install (exit 0; 3 with
   ``--require-tensorrt``).

Output directory (default ``<bundle>/engine``)::

    model.fp32.onnx        re-exported fp32 ONNX (opset 17, dynamic batch)
    model.int8.qdq.onnx    int8 only: explicitly quantised (Q/DQ) ONNX
    calibration.cache      int8 only: TensorRT calibration cache (TRT-<ver>-EntropyCalibration2)
    calibration.json       int8 only: calibration report (method, excluded nodes, range comparison)
    ranges/{entropy,percentile}.json   int8 only: activation ranges (onnxruntime JSON cache)
    crops.json             the calibration / held-out crop sets (sources, yaw histogram)
    validation.json        every artefact's figures, thresholds and pass/fail
    model.engine           TensorRT only: serialized engine
    engine_manifest.json   TensorRT only: version, GPU, profile, precision, validation, source bundle
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from pydantic import BaseModel, ConfigDict, Field

from calibration.dataset import CropSet, CropSetConfig, build_crop_sets
from engine.bundle import Bundle, BundleError, load_bundle
from engine.trt_manifest import (
    ENGINE_FILE, MANIFEST_FILE, EngineManifest, SourceBundle, file_ref, profile_for, sha256_file,
)
from plugins.landmarks.transformer import OUTPUT_NAMES, LandmarkTransformer, create_model
from training.bundle import OPSET, export_onnx

log = logging.getLogger(__name__)

FP32_ONNX = "model.fp32.onnx"
EXIT_VALIDATION_FAILED, EXIT_NO_TENSORRT = 2, 3


def next_steps(args, failures: list[str]) -> str:
    """What to do after a failed validation (the figures table above says by how much it failed)."""
    steps = []
    if any("int8" in f for f in failures):
        other = "percentile" if args.calib_method == "entropy" else "entropy"
        steps += [f"other activation ranges: --calib-method {other}",
                  f"more calibration crops: --num-calibration {max(4 * args.num_calibration, 512)}",
                  "or deploy fp16, which needs no calibration: --precision fp16"]
    steps.append(f"or accept the measured difference: --max-nme-delta / --max-pose-delta-deg above it "
                 f"(now {args.max_nme_delta} % / {args.max_pose_delta_deg} deg)")
    return "next steps:\n  " + "\n  ".join(steps) + f"\nfigures: {Path(args.out or Path(args.bundle) / 'engine') / 'validation.json'}"


class Thresholds(BaseModel):
    """Limits on the mean over held-out crops (and on the fp32 ONNX's max landmark difference)."""

    model_config = ConfigDict(extra="forbid")

    max_nme_delta: float = Field(1.0, ge=0)  # %, artefact vs PyTorch landmarks
    max_pose_delta_deg: float = Field(1.0, ge=0)
    fp32_max_landmark_px: float = Field(0.05, ge=0)  # fp32 ONNX must match PyTorch to numerics


# --- reference model and inference -----------------------------------------------------------------
def load_reference_model(bundle: Bundle) -> LandmarkTransformer:
    """The bundle's architecture with its fp16 safetensors weights cast to fp32, eval mode."""
    from safetensors.torch import load_file

    cfg = {k: v for k, v in bundle.manifest.model.items() if k != "architecture"}
    model = create_model(cfg).eval()
    state = {k: v.float() for k, v in load_file(str(bundle.weights_path)).items()}
    model.load_state_dict(state)
    return model


def torch_outputs(model: torch.nn.Module, x: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(torch.from_numpy(x[i : i + batch]))
            parts.append({k: out[k].numpy() for k in OUTPUT_NAMES})
    return {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_NAMES}


def onnx_outputs(path: str | Path, x: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    parts = [session.run(list(OUTPUT_NAMES), {"image": x[i : i + batch]}) for i in range(0, len(x), batch)]
    return {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(OUTPUT_NAMES)}


# --- figures ---------------------------------------------------------------------------------------
def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """(N,) geodesic angle between rotations (N, 3, 3), degrees. ``|Ra - Rb|_F = 2 sqrt(2) sin(a / 2)``:
    accurate for tiny angles, where arccos of the trace loses them to rounding."""
    chord = np.linalg.norm((np.asarray(Ra, np.float64) - Rb).reshape(len(Ra), -1), axis=-1)
    return np.degrees(2.0 * np.arcsin(np.clip(chord / (2.0 * np.sqrt(2.0)), 0.0, 1.0)))


def compare_outputs(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], crops: CropSet) -> dict:
    """Artefact vs PyTorch figures on ``crops`` (see the module docstring)."""
    dist = np.linalg.norm(got["landmarks_2d"] - ref["landmarks_2d"], axis=-1)  # (N, 68) crop px
    nme = dist.mean(-1) / crops.norm * 100.0
    pose = rotation_angle_deg(got["rotation"], ref["rotation"])
    fig = {
        "crops": len(crops), "real": int(crops.is_real.sum()), "synthetic": int((~crops.is_real).sum()),
        "max_landmark_px": float(dist.max()), "mean_landmark_px": float(dist.mean()),
        "nme_delta": float(nme.mean()), "nme_delta_p95": float(np.percentile(nme, 95)),
        "pose_delta_deg": float(pose.mean()), "pose_delta_deg_max": float(pose.max()),
        "max_abs_diff": {k: float(np.abs(got[k] - ref[k]).max()) for k in OUTPUT_NAMES},
    }
    gt = ~np.isnan(crops.landmarks).any(axis=(1, 2))
    if gt.any():  # renders: the change of accuracy against ground truth
        def nme_gt(pred):
            return float((np.linalg.norm(pred[gt] - crops.landmarks[gt], axis=-1).mean(-1) / crops.norm[gt]).mean() * 100)

        fig["gt_nme_reference"], fig["gt_nme_artifact"] = nme_gt(ref["landmarks_2d"]), nme_gt(got["landmarks_2d"])
        fig["gt_nme_change"] = fig["gt_nme_artifact"] - fig["gt_nme_reference"]
    for kind, mask in (("real", crops.is_real), ("synthetic", ~crops.is_real)):
        if mask.any():
            fig[f"nme_delta_{kind}"] = float(nme[mask].mean())
            fig[f"pose_delta_deg_{kind}"] = float(pose[mask].mean())
    return fig


def check(name: str, fig: dict, thr: Thresholds, fp32: bool = False) -> list[str]:
    """Failure messages of one artefact (empty: passed)."""
    failures = []
    if fig["nme_delta"] > thr.max_nme_delta:
        failures.append(f"{name}: NME delta {fig['nme_delta']:.3f}% > --max-nme-delta {thr.max_nme_delta}%")
    if fig["pose_delta_deg"] > thr.max_pose_delta_deg:
        failures.append(f"{name}: pose delta {fig['pose_delta_deg']:.3f} deg > --max-pose-delta-deg {thr.max_pose_delta_deg}")
    if fp32 and fig["max_landmark_px"] > thr.fp32_max_landmark_px:
        failures.append(f"{name}: max landmark difference {fig['max_landmark_px']:.4f} px > {thr.fp32_max_landmark_px} px "
                        "(fp32 ONNX must match PyTorch; an export problem)")
    return failures


def format_row(name: str, fig: dict) -> str:
    gt = f"{fig['gt_nme_change']:+.3f}" if "gt_nme_change" in fig else "n/a"
    return (f"{name:<22} {fig['crops']:>5} {fig['max_landmark_px']:>10.4f} {fig['nme_delta']:>10.4f} "
            f"{fig['pose_delta_deg']:>10.4f} {fig['pose_delta_deg_max']:>10.4f} {gt:>10}")


TABLE_HEADER = f"{'artefact':<22} {'crops':>5} {'max px':>10} {'NME d %':>10} {'pose d':>10} {'pose max':>10} {'GT NME d':>10}"


# --- the build -------------------------------------------------------------------------------------
def _validate_all(out: Path, bundle: Bundle, model, crop_cfg: CropSetConfig, args, thr: Thresholds) -> tuple[dict, list[str], CropSet, np.ndarray]:
    size = bundle.input_size
    calib, heldout = build_crop_sets(crop_cfg, size)
    if not len(heldout):
        raise RuntimeError("no held-out crops to validate on (no face in the held-out videos, no synthetic crops)")
    (out / "crops.json").write_text(json.dumps({
        "config": crop_cfg.model_dump(mode="json"),
        "calibration": {**calib.describe(), "sources": calib.source},
        "heldout": {**heldout.describe(), "sources": heldout.source},
    }, indent=1))
    x_val = bundle.preprocess(heldout.crops)
    ref = torch_outputs(model, x_val)
    figures, failures = {}, []
    figures["onnx_fp32"] = compare_outputs(ref, onnx_outputs(out / FP32_ONNX, x_val), heldout)
    failures += check("onnx_fp32", figures["onnx_fp32"], thr, fp32=True)
    if args.precision == "int8":
        from calibration.qdq import QDQ_FILE, QuantConfig, calibrate

        report = calibrate(out / FP32_ONNX, bundle.preprocess(calib.crops), out,
                           QuantConfig(method=args.calib_method))
        figures["calibration"] = report
        figures["onnx_int8_qdq"] = compare_outputs(ref, onnx_outputs(out / QDQ_FILE, x_val), heldout)
        failures += check("onnx_int8_qdq", figures["onnx_int8_qdq"], thr)
    return figures, failures, heldout, (x_val, ref)


def build(args: argparse.Namespace) -> int:
    thr = Thresholds(max_nme_delta=args.max_nme_delta, max_pose_delta_deg=args.max_pose_delta_deg)
    bundle = load_bundle(args.bundle)
    out = Path(args.out) if args.out else Path(args.bundle) / "engine"
    out.mkdir(parents=True, exist_ok=True)
    profile = profile_for(bundle.input_size, args.max_batch, args.opt_batch)  # validates 1 <= opt <= max

    model = load_reference_model(bundle)
    export_err = export_onnx(model, model.cfg, out / FP32_ONNX)
    log.info("exported %s (opset %d, dynamic batch; max |onnx - torch| %.2e on random input)", out / FP32_ONNX, OPSET, export_err)

    crop_cfg = CropSetConfig(frames_per_video=args.frames_per_video, renders=args.renders,
                             num_calibration=args.num_calibration, videos=args.videos, dataset=args.dataset or [])
    figures, failures, heldout, (x_val, ref) = _validate_all(out, bundle, model, crop_cfg, args, thr)
    print(TABLE_HEADER)
    for name in ("onnx_fp32", "onnx_int8_qdq"):
        if name in figures:
            print(format_row(name, figures[name]))

    validation = {"opset": OPSET, "precision": args.precision, "thresholds": thr.model_dump(),
                  "figures": figures, "failures": failures, "passed": not failures}
    (out / "validation.json").write_text(json.dumps(validation, indent=1))
    if failures:
        print("VALIDATION FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        print(next_steps(args, failures), file=sys.stderr)
        return EXIT_VALIDATION_FAILED

    from training.trt_build import TensorRTUnavailable, cuda_device, import_tensorrt

    try:
        trt = import_tensorrt()
        gpu_name, cc = cuda_device()
    except TensorRTUnavailable as e:
        print(f"validated ONNX written to {out}; no TensorRT engine built.\n{e}", file=sys.stderr)
        return EXIT_NO_TENSORRT if args.require_tensorrt else 0
    return _build_trt(out, bundle, args, thr, profile, validation, heldout, x_val, ref, trt, gpu_name, cc)


def _build_trt(out, bundle, args, thr, profile, validation, heldout, x_val, ref, trt, gpu_name, cc) -> int:
    from calibration.qdq import CACHE_FILE, QDQ_FILE
    from training.trt_build import BuildOptions, TrtRunner, build_serialized_engine, builder_settings, to_fp16_onnx, trt_major

    options = BuildOptions(precision=args.precision, profile=profile, workspace_gib=args.workspace_gib,
                           int8_mode=args.int8_mode, calibration_cache=str(out / CACHE_FILE))
    paths = {"fp32": out / FP32_ONNX, "qdq": out / QDQ_FILE}
    settings = builder_settings(trt_major(trt.__version__), args.precision, args.int8_mode)
    if settings.onnx_variant == "fp16":
        paths["fp16"] = to_fp16_onnx(out / FP32_ONNX, out / "model.fp16.onnx")
    serialized, info = build_serialized_engine(paths, options)
    engine_path = out / ENGINE_FILE
    engine_path.write_bytes(serialized)
    runner = TrtRunner(serialized)
    parts = [runner.run(x_val[i : i + args.max_batch]) for i in range(0, len(x_val), args.max_batch)]
    got = {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_NAMES}
    fig = compare_outputs(ref, got, heldout)
    print(format_row(f"tensorrt_{args.precision}", fig))
    failures = check(f"tensorrt_{args.precision}", fig, thr)
    validation["figures"][f"tensorrt_{args.precision}"] = fig
    validation["failures"] += failures
    validation["passed"] = not validation["failures"]
    (out / "validation.json").write_text(json.dumps(validation, indent=1))
    if failures:
        engine_path.unlink()
        print("VALIDATION FAILED (engine removed):\n  " + "\n  ".join(failures), file=sys.stderr)
        return EXIT_VALIDATION_FAILED
    manifest = EngineManifest(
        tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc, precision=args.precision,
        quantization=("qdq" if settings.onnx_variant == "qdq" else "calibrator" if settings.use_calibrator else "none"),
        profile=profile, inputs=list(runner.inputs), outputs=list(runner.outputs),
        engine=file_ref(engine_path), onnx=file_ref(paths[settings.onnx_variant]),
        source_bundle=SourceBundle(path=str(Path(args.bundle).resolve()), name=bundle.manifest.name,
                                   manifest_sha256=sha256_file(Path(args.bundle) / "manifest.json")),
        validation={k: v for k, v in validation["figures"].items() if k != "calibration"} | {"thresholds": thr.model_dump()},
        build={**info, "host": platform.node(), "opset": OPSET},
    )
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=1))
    print(f"TensorRT {trt.__version__} engine for {gpu_name} written: {engine_path}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.build_engine", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="model bundle directory (training/bundle.py)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--opt-batch", type=int, default=None, help="profile's optimal batch (default: --max-batch)")
    p.add_argument("--out", help="output directory (default: <bundle>/engine)")
    p.add_argument("--max-nme-delta", type=float, default=Thresholds().max_nme_delta, help="%% of face size")
    p.add_argument("--max-pose-delta-deg", type=float, default=Thresholds().max_pose_delta_deg)
    p.add_argument("--calib-method", choices=["entropy", "percentile"], default="percentile",  # QuantConfig().method
                   help="int8 activation ranges (entropy failed the validation on the committed bundles)")
    p.add_argument("--int8-mode", choices=["qdq", "calibrator"], default="qdq",
                   help="TensorRT int8: Q/DQ ONNX (explicit) or calibration cache (implicit, TensorRT 10)")
    p.add_argument("--frames-per-video", type=int, default=CropSetConfig().frames_per_video)
    p.add_argument("--dataset", nargs="*", default=None, type=Path, metavar="DIR",
                   help="pseudo-label dataset folder(s) from python -m training.pseudolabel: synthetic crops "
                        "(generator renders with ground-truth landmarks) from their MV samples; without it "
                        "the crops are real video faces only")
    p.add_argument("--renders", type=int, default=CropSetConfig().renders,
                   help="synthetic crops per split, taken from --dataset (0: none)")
    p.add_argument("--num-calibration", type=int, default=CropSetConfig().num_calibration)
    p.add_argument("--videos", nargs="*", default=None, help="video or photo files for real crops (default: shared assets/videos)")
    p.add_argument("--workspace-gib", type=float, default=4.0)
    p.add_argument("--require-tensorrt", action="store_true", help=f"exit {EXIT_NO_TENSORRT} when TensorRT is missing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return build(args)
    except (BundleError, ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"build_engine: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
