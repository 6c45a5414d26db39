"""Landmark model throughput (faces/s) vs batch size, per backend, on real face crops.

    python benchmarks/bench_landmarks.py [--bundle DIR] [--backends onnxruntime torch] [--batches 1 8 32]
        [--device cpu|cuda] [--precision fp32|fp16|bf16] [--threads N] [--seconds 2]

Crops come from the sample clip's CenterFace box (engine.crop), preprocessed once: the figure is the
backend call alone (what engine/batcher.py feeds). On CUDA the torch backend uses its CUDA graphs
(the first call per batch size captures one and is not timed).
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from engine.assets import default_bundle, sample_clip
from engine.bundle import load_bundle
from engine.crop import crop_matrix, roi_from_box, warp_crop
from plugins.detectors.centerface import CenterFace
from plugins.landmarks.backends import create_backend
from plugins.sources.pyav_source import FileSource


def face_crops(bundle, n: int) -> np.ndarray:
    source = FileSource(FileSource.Options(path=str(sample_clip()), max_frames=n), "bench")
    frames = list(source.frames(threading.Event()))
    detector = CenterFace(input_size=320)
    crops = []
    for frame, det in zip(frames, detector.detect_batch([f.image for f in frames])):
        for box in det.boxes[:1]:
            crops.append(warp_crop(frame.image, crop_matrix(roi_from_box(box), bundle.input_size), bundle.input_size))
    return bundle.preprocess(np.stack(crops))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(default_bundle()))
    p.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seconds", type=float, default=2.0, help="time per (backend, batch) point")
    args = p.parse_args()
    bundle = load_bundle(args.bundle)
    pool = face_crops(bundle, 16)
    print(f"bundle {bundle.manifest.name} (input {bundle.input_size}px), device {args.device}, {args.precision}")
    print(f"{'backend':>12} {'batch':>6} {'faces/s':>10} {'ms/call':>9}")
    for name in args.backends:
        backend = create_backend(bundle, name, args.device, args.precision, max(args.batches), args.threads)
        for batch in args.batches:
            x = np.ascontiguousarray(pool[np.arange(batch) % len(pool)])
            backend.infer(x)  # warm-up (graph capture, allocator)
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < args.seconds or calls < 3:
                backend.infer(x)
                calls += 1
            print(f"{name:>12} {batch:>6} {calls * batch / elapsed:>10.1f} {1000 * elapsed / calls:>9.2f}")
        backend.close()


if __name__ == "__main__":
    main()
