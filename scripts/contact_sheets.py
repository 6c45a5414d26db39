"""Contact sheets of the embedded generator, written into docs/:

- docs/contact_41_views.jpg: one identity's 41 rig views in the rig layout (7x7 grid, the 8 extreme
  corners left empty) with the LIFTED 3D pseudo-label projected into each view (filled: visible by the
  occlusion mask, hollow: masked) and the teacher's own 2D detections as small white dots.
- docs/contact_training_renders.jpg: 24 training renders from the augmented camera space with their
  labels (the lifted landmarks posed by the render camera), exactly as training/pseudolabel.py makes them.

    python scripts/contact_sheets.py [--size 256] [--seed 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.assets import REPO_ROOT
from engine.landmarks68 import REGIONS
from plugins.detectors.centerface import CenterFace
from training.cameras import rig_camera, rig_views
from training.generators.ict_head import ICTHeadGenerator
from training.masks import landmark_visibility
from training.mv import MVLabeler
from training.teacher.tddfa import Teacher

REGION_COLOURS = {"contour": (230, 40, 40), "brows": (40, 200, 60), "nose": (40, 200, 60),
                  "eyes": (40, 90, 255), "mouth": (255, 150, 20)}


def draw_landmarks(image: np.ndarray, landmarks_2d: np.ndarray, visible: np.ndarray | None = None,
                   radius: float = 1.5) -> Image.Image:
    """Draws 68 points (region colours; hidden ones hollow) on a copy of ``image``."""
    im = Image.fromarray(image)
    d = ImageDraw.Draw(im)
    for region, sl in REGIONS.items():
        for i in range(sl.start, sl.stop):
            x, y = landmarks_2d[i]
            box = [x - radius, y - radius, x + radius, y + radius]
            if visible is None or visible[i]:
                d.ellipse(box, fill=REGION_COLOURS[region])
            else:
                d.ellipse(box, outline=REGION_COLOURS[region])
    return im


def rig_sheet(gen: ICTHeadGenerator, seed: int, size: int, landmarks: list[np.ndarray] | None = None,
              visible: np.ndarray | None = None, detections: np.ndarray | None = None) -> Image.Image:
    """41 views in their grid positions; ``landmarks`` (one (68,2) per view) default to the exact ones;
    ``visible`` (41, 68) draws masked points hollow; ``detections`` (41, 68, 2) adds the teacher's points."""
    views = rig_views()
    azs, els = sorted({a for a, _ in views}), sorted({e for _, e in views}, reverse=True)
    sheet = Image.new("RGB", (size * len(azs), size * len(els)), (255, 255, 255))
    ident = gen.identity(seed)
    for k, (az, el) in enumerate(views):
        r = gen.render(ident, rig_camera(az, el, size))
        lm = r.landmarks_2d if landmarks is None else landmarks[k]
        tile = draw_landmarks(r.image, lm, None if visible is None else visible[k], radius=max(1.0, size / 160))
        if detections is not None:
            d = ImageDraw.Draw(tile)
            for x, y in detections[k]:
                d.point((float(x), float(y)), fill=(255, 255, 255))
        ImageDraw.Draw(tile).text((3, 2), f"az {az:+.0f} el {el:+.0f}", fill=(255, 255, 255))
        sheet.paste(tile, (azs.index(az) * size, els.index(el) * size))
    return sheet


def training_sheet(labeler: MVLabeler, seed: int, size: int, n: int = 24, cols: int = 6) -> Image.Image:
    """``n`` training renders (one lifted identity each) with their lifted labels drawn."""
    rng = np.random.default_rng(seed)
    sheet = Image.new("RGB", (size * cols, size * ((n + cols - 1) // cols)))
    k = 0
    while k < n:
        lifted = labeler.lift_identity(int(rng.integers(2**31)))
        if not lifted.ok:
            continue
        image, label = next(labeler.training_renders(lifted, 1, rng))
        tile = draw_landmarks(image, label["landmarks_2d"], label["visible"], radius=max(1.0, size / 160))
        sheet.paste(tile, ((k % cols) * size, (k // cols) * size))
        k += 1
    return sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "docs")
    args = ap.parse_args()
    gen = ICTHeadGenerator()
    labeler = MVLabeler(gen, Teacher(), CenterFace(input_size=320), rig_size=args.size, image_size=args.size)
    t0 = time.perf_counter()
    lifted = labeler.lift_identity(args.seed)
    cams = [rig_camera(az, el, args.size) for az, el in rig_views()]
    lifted_2d = [c.project(lifted.lift.points) for c in cams]
    visible = np.stack([landmark_visibility(c.R) for c in cams])
    rig_sheet(gen, args.seed, args.size, lifted_2d, visible, lifted.detections).save(
        args.out / "contact_41_views.jpg", quality=88)
    training_sheet(labeler, args.seed, args.size).save(args.out / "contact_training_renders.jpg", quality=88)
    print(f"wrote {args.out}/contact_41_views.jpg and contact_training_renders.jpg ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
