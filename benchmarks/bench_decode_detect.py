"""Decode-only vs decode+detect throughput on one clip, measured in the same run.

    python benchmarks/bench_decode_detect.py [--clip PATH] [--input-size 640] [--batch-size 4] [--repeat 1]

Decoding uses the ``file`` source (PyAV, threaded decode, RGB conversion) exactly as a pipeline does; detection
runs the CenterFace detector on batches of frames in the same thread, so the second figure is the serial
throughput of one source feeding one detector (the runtime overlaps them in separate threads).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from engine.assets import sample_clip
from engine.frame import Frame
from plugins.detectors.centerface import CenterFace
from plugins.sources.pyav_source import FileSource


def decoded(clip: Path, max_frames: int | None) -> Iterator[Frame]:
    source = FileSource(FileSource.Options(path=str(clip), max_frames=max_frames), "bench")
    yield from source.frames(threading.Event())
    if source.errors:
        raise SystemExit(f"cannot decode {clip}: {source.errors}")


def decode_only(clip: Path, max_frames: int | None) -> tuple[int, float]:
    start = time.perf_counter()
    n = sum(1 for _ in decoded(clip, max_frames))
    return n, time.perf_counter() - start


def decode_detect(clip: Path, max_frames: int | None, detector: CenterFace, batch_size: int) -> tuple[int, float, int]:
    n = faces = 0
    batch: list[Frame] = []
    start = time.perf_counter()
    for frame in decoded(clip, max_frames):
        batch.append(frame)
        if len(batch) == batch_size:
            faces += sum(len(d) for d in detector.detect_batch([f.image for f in batch]))
            n, batch = n + len(batch), []
    if batch:
        faces += sum(len(d) for d in detector.detect_batch([f.image for f in batch]))
        n += len(batch)
    return n, time.perf_counter() - start, faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=sample_clip())
    parser.add_argument("--input-size", type=int, default=640, help="detector long side (multiple of 32)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()

    detector = CenterFace(input_size=args.input_size, intra_op_threads=args.threads)
    warm = next(decoded(args.clip, 1))
    detector.detect_batch([warm.image] * args.batch_size)  # session warm-up, not timed

    n_dec, t_dec = decode_only(args.clip, args.max_frames)
    n_det, t_det, faces = decode_detect(args.clip, args.max_frames, detector, args.batch_size)
    fps_dec, fps_det = n_dec / t_dec, n_det / t_det
    w, h = warm.size
    print(f"clip {args.clip} ({w}x{h}), CenterFace input long side {args.input_size}, batch {args.batch_size}")
    print(f"{'mode':<16}{'frames':>8}{'seconds':>10}{'fps':>10}")
    print(f"{'decode':<16}{n_dec:>8}{t_dec:>10.2f}{fps_dec:>10.1f}")
    print(f"{'decode+detect':<16}{n_det:>8}{t_det:>10.2f}{fps_det:>10.1f}")
    print(f"ratio decode / decode+detect: {fps_dec / fps_det:.1f}x   faces found: {faces} ({faces / n_det:.2f} per frame)")


if __name__ == "__main__":
    main()
