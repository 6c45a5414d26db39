"""``python -m calibration --bundle DIR --onnx model.fp32.onnx --out DIR [--method entropy|percentile] [--dataset DIR]``

Selects the calibration crops (calibration/dataset.py: real video faces, plus synthetic ones from the MV
samples of a ``python -m training.pseudolabel`` folder given with ``--dataset``), computes entropy and
percentile ranges, and writes the Q/DQ ONNX, ``calibration.cache``, ``calibration.json``, ``ranges/`` and ``crops.json``
into ``--out``. ``python -m training.build_engine --precision int8`` runs the same steps and validates
the result; this entry point is for calibrating on its own (other crop counts, methods, exclusions).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from calibration.dataset import CropSetConfig, build_crop_sets
from calibration.qdq import QuantConfig, calibrate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="model bundle (input size and normalisation)")
    p.add_argument("--onnx", help="fp32 ONNX to quantise (default: the bundle's model.onnx)")
    p.add_argument("--out", required=True)
    p.add_argument("--method", choices=["entropy", "percentile"], default=QuantConfig().method)
    p.add_argument("--percentile", type=float, default=99.999)
    p.add_argument("--num-calibration", type=int, default=CropSetConfig().num_calibration)
    p.add_argument("--frames-per-video", type=int, default=CropSetConfig().frames_per_video)
    p.add_argument("--dataset", nargs="*", default=None, metavar="DIR", type=Path,
                   help="pseudo-label dataset folder(s) from `python -m training.pseudolabel`: synthetic crops "
                        "from their MV samples (default: none, real video faces only)")
    p.add_argument("--renders", type=int, default=CropSetConfig().renders,
                   help="synthetic crops per split from --dataset (0: none)")
    p.add_argument("--videos", nargs="*", default=None, help="video or photo files for real crops (default: shared assets/videos)")
    p.add_argument("--keep-float", nargs="*", default=[], metavar="REGEX", help="extra node-name regexes kept in float")
    p.add_argument("--quantize-heads", action="store_true", help="quantise the output heads too (not advised)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from engine.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(args.bundle)
        crop_cfg = CropSetConfig(num_calibration=args.num_calibration, frames_per_video=args.frames_per_video,
                                 renders=args.renders, videos=args.videos, dataset=args.dataset or [])
        calib, _ = build_crop_sets(crop_cfg, bundle.input_size)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "crops.json").write_text(json.dumps({**calib.describe(), "sources": calib.source}, indent=1))
        cfg = QuantConfig(method=args.method, percentile=args.percentile, exclude_patterns=args.keep_float,
                          exclude_heads=not args.quantize_heads)
        report = calibrate(args.onnx or bundle.onnx_path, bundle.preprocess(calib.crops), out, cfg)
    except (BundleError, ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"calibration: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: report[k] for k in ("method", "inputs", "qdq_onnx", "calibration_cache", "quantized_nodes",
                                             "quantizable_nodes", "range_comparison")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
