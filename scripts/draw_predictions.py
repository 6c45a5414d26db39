"""Draw the engine's predictions (CenterFace boxes, 68 landmarks coloured by visibility, pose axes) on the
real photos of ``../shared/assets/images/`` and write one contact sheet:

    python scripts/draw_predictions.py [--bundle models/NAME] [--out docs/predictions_photos.jpg]
    python scripts/draw_predictions.py --wild [--out docs/predictions_wild.jpg]

It runs the same stage plugins as ``python -m engine run`` (no tracking: each photo is its own stream).
``--wild`` draws frames of real clips in ``../shared/assets/wild/videos/`` instead: every 10th frame of
every clip is run, and the sheet shows the frames with the largest predicted |yaw| and |pitch|, one per
clip (held-out validation clips included; a wrong large prediction shows up there too).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.assets import REPO_ROOT, default_bundle, shared_asset
from engine.frame import Frame
from plugins.detectors.centerface import CenterFaceDetector
from plugins.landmarks.stage import LandmarkStage
from plugins.sinks.draw import DrawStyle, annotate

PHOTOS = ["pyfeat_single_face.jpg", "skimage_astronaut.png", "3ddfa_v2_JianzhuGuo.jpg", "pyfeat_multi_face.jpg",
          "3ddfa_v2_trump_hillary.jpg", "insightface_t1.jpg", "3ddfa_v2_emma.jpg"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=default_bundle())
    ap.add_argument("--out", type=Path, help="default: docs/predictions_photos.jpg, or docs/predictions_wild.jpg with --wild")
    ap.add_argument("--tile-height", type=int, default=480)
    ap.add_argument("--wild", action="store_true", help="frames of the wild clips with large yaw and pitch")
    ap.add_argument("--tiles", type=int, default=8, help="--wild: frames on the sheet")
    args = ap.parse_args()
    if args.out is None:
        args.out = REPO_ROOT / "docs" / ("predictions_wild.jpg" if args.wild else "predictions_photos.jpg")
    if args.wild:
        return wild_sheet(args)

    detector = CenterFaceDetector(CenterFaceDetector.Options())
    landmarks = LandmarkStage(LandmarkStage.Options(bundle=str(args.bundle), backend="onnxruntime", tracking=False))
    detector.start()
    landmarks.start()
    tiles, t0 = [], time.perf_counter()
    for name in PHOTOS:
        image = np.asarray(Image.open(shared_asset("images", name)).convert("RGB"))
        frame = Frame(stream_id=name, index=0, pts=None, time=time.time(), image=image)
        frame = landmarks.process(detector.process([frame]))[0]
        scale = args.tile_height / image.shape[0]
        k = max(1, round(1 / scale))  # drawn sizes in tile pixels: thicker on photos that shrink more
        style = DrawStyle(line_width=2 * k, point_radius=2 * k, font_size=14 * k)
        drawn = Image.fromarray(annotate(frame.image, frame.faces, style, K=frame.meta.get("camera_matrix")))
        tiles.append(drawn.resize((round(drawn.width * scale), args.tile_height), Image.BILINEAR))
        print(f"{name}: {len(frame.faces)} faces")
    landmarks.close()
    detector.close()

    # two rows of tiles, each row as wide as its tiles
    rows = [tiles[:3], tiles[3:5], tiles[5:]]
    width = max(sum(t.width for t in row) for row in rows)
    sheet = Image.new("RGB", (width, args.tile_height * len(rows)), (255, 255, 255))
    for r, row in enumerate(rows):
        x = 0
        for tile in row:
            sheet.paste(tile, (x, r * args.tile_height))
            x += tile.width
    sheet.save(args.out, quality=88)
    print(f"wrote {args.out} ({time.perf_counter() - t0:.1f} s)")


def wild_sheet(args) -> None:
    from training.mf import iter_frames

    detector = CenterFaceDetector(CenterFaceDetector.Options(input_size=640))
    landmarks = LandmarkStage(LandmarkStage.Options(bundle=str(args.bundle), backend="onnxruntime", tracking=False))
    detector.start()
    landmarks.start()
    found = []  # (|yaw|, |pitch|, clip, index, frame)
    for clip in sorted(shared_asset("wild", "videos").iterdir()):
        for index, image in iter_frames(clip, 10):
            frame = Frame(stream_id=clip.name, index=index, pts=None, time=time.time(), image=image)
            frame = landmarks.process(detector.process([frame]))[0]
            if frame.faces and frame.faces[0].euler is not None:
                yaw, pitch, _ = np.abs(frame.faces[0].euler)
                found.append((float(yaw), float(pitch), clip.name, index, frame))
    # half the tiles by |yaw|, half by |pitch|, one frame per clip
    picked, clips = [], set()
    for key in (0, 1) * args.tiles:
        for f in sorted(found, key=lambda f: -f[key]):
            if f[2] not in clips:
                picked.append(f)
                clips.add(f[2])
                break
        if len(picked) == args.tiles:
            break
    tiles = []
    h = args.tile_height // 2
    for yaw, pitch, clip, index, frame in picked:
        scale = h / frame.image.shape[0]
        k = max(1, round(1 / scale))
        style = DrawStyle(line_width=2 * k, point_radius=2 * k, font_size=14 * k)
        drawn = Image.fromarray(annotate(frame.image, frame.faces, style, K=frame.meta.get("camera_matrix")))
        tiles.append(drawn.resize((round(drawn.width * scale), h), Image.BILINEAR))
        print(f"{clip} frame {index}: yaw {yaw:.0f} pitch {pitch:.0f}")
    landmarks.close()
    detector.close()
    per_row = (len(tiles) + 1) // 2
    rows = [tiles[:per_row], tiles[per_row:]]
    width = max(sum(t.width for t in row) for row in rows)
    sheet = Image.new("RGB", (width, h * 2), (255, 255, 255))
    for r, row in enumerate(rows):
        x = 0
        for tile in row:
            sheet.paste(tile, (x, r * h))
            x += tile.width
    sheet.save(args.out, quality=85)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
