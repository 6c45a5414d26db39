"""AFLW2000-3D reader, original 68 points or the re-annotated ones (seed Table 3).

AFLW2000-3D (the ``AFLW2000/`` folder of AFLW2000-3D.zip) pairs every ``imageNNNNN.jpg`` with an
``imageNNNNN.mat``: ``pt3d_68`` (3, 68) image x, y (+ depth), ``Pose_Para`` (1, 7) pitch, yaw, roll in
radians then translation and scale. The re-annotated 68 points are 3DDFA's
``test.configs/AFLW2000-3D-Reannotated.pts68.npy``: (2000, 2 or 3, 68) in original-image pixels, in the
order of ``AFLW2000-3D_crop.list`` (sorted file names). NME uses the tight box of the ground-truth
68 points (as 3DDFA's benchmark_aflw2000.py) and reports the |yaw| bins [0,30], (30,60], (60,90].
``Pose_Para`` uses 300W-LP's angle conventions, not ours; the angles go to ``extras`` and the yaw bin
to ``attributes`` rather than into a rotation matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.io

from training.evaluation.metrics import landmark_box
from training.evaluation.readers.base import EvalSample, Reader

REANNOTATED_NAME = "AFLW2000-3D-Reannotated.pts68.npy"
LIST_NAME = "AFLW2000-3D_crop.list"

LAYOUT = f"""\
<root>/                                  (the AFLW2000 folder of AFLW2000-3D.zip, or its parent)
  image00002.jpg, image00002.mat         .mat keys: pt3d_68 (3x68), Pose_Para (1x7)
  ...
re-annotated landmarks (optional): {REANNOTATED_NAME} (2000 x 2|3 x 68, from 3DDFA test.configs/)
  looked up in <root>, its parent, and their test.configs/ folders (or pass reannotated=PATH);
  its order is {LIST_NAME} if present there, else the sorted image names"""


def yaw_bin(yaw_deg: float) -> str:
    a = abs(yaw_deg)
    return "[0,30]" if a <= 30 else "(30,60]" if a <= 60 else "(60,90]"


class AFLW2000Reader(Reader):
    name = "AFLW2000-3D"
    layout = LAYOUT

    def __init__(self, root: str | Path, landmarks: str = "reannotated", reannotated: str | Path | None = None):
        super().__init__()
        if landmarks not in ("reannotated", "original"):
            raise ValueError(f"landmarks must be 'reannotated' or 'original', got {landmarks!r}")
        root = self._require(Path(root))
        if not any(root.glob("image*.mat")) and (root / "AFLW2000").is_dir():
            root = root / "AFLW2000"
        self.root = root
        self.images = sorted(root.glob("image*.jpg"))
        if not self.images:
            raise self._error(root / "image00002.jpg", "no image*.jpg found")
        self.landmarks = landmarks
        self.reannotated_path = None
        self._re = None
        if landmarks == "reannotated":
            self.reannotated_path = Path(reannotated) if reannotated else self._find(REANNOTATED_NAME)
            if self.reannotated_path is None or not self.reannotated_path.exists():
                raise self._error(self.reannotated_path or root / REANNOTATED_NAME,
                                  "re-annotated landmarks not found (use landmarks='original' without them)")
            self._re = self._load_reannotated(self.reannotated_path)

    def _error(self, path: Path, hint: str):
        from training.evaluation.readers.base import DatasetLayoutError

        return DatasetLayoutError(self.name, path, self.layout, hint)

    def _find(self, name: str) -> Path | None:
        for d in (self.root, self.root.parent, self.root / "test.configs", self.root.parent / "test.configs"):
            if (d / name).exists():
                return d / name
        return None

    def _load_reannotated(self, path: Path) -> dict[str, np.ndarray]:
        arr = np.load(path)
        if arr.ndim != 3 or 68 not in arr.shape[1:]:
            raise ValueError(f"{path}: expected (N, 2|3, 68) landmarks, got {arr.shape}")
        if arr.shape[1] != 68:
            arr = np.swapaxes(arr, 1, 2)  # -> (N, 68, 2|3)
        list_path = self._find(LIST_NAME)
        names = ([Path(ln.strip()).stem for ln in list_path.read_text().splitlines() if ln.strip()]
                 if list_path else [p.stem for p in self.images])
        if len(names) != arr.shape[0]:
            raise ValueError(
                f"{path}: {arr.shape[0]} landmark sets but {len(names)} images "
                f"({'in ' + str(list_path) if list_path else 'under ' + str(self.root)}); the re-annotated "
                "file lists all 2000 images in the order of AFLW2000-3D_crop.list: put that list next to it"
            )
        return {n: arr[i, :, :2].astype(np.float32) for i, n in enumerate(names)}

    def _samples(self) -> Iterator[EvalSample]:
        for image in self.images:
            key = image.stem
            mat_path = image.with_suffix(".mat")
            try:
                mat = scipy.io.loadmat(mat_path)
                pt3d = np.asarray(mat["pt3d_68"], np.float32).reshape(3, 68).T
                pose = np.asarray(mat["Pose_Para"], np.float64).reshape(-1)
            except (OSError, KeyError, ValueError) as exc:
                self._skip(key, f"{mat_path}: needs pt3d_68 (3x68) and Pose_Para (1x7): {exc!r}")
                continue
            if self._re is not None:
                if key not in self._re:
                    self._skip(key, f"not in {self.reannotated_path}")
                    continue
                lm2d = self._re[key]
            else:
                lm2d = pt3d[:, :2].copy()
            pitch, yaw, roll = np.degrees(pose[:3])
            yield EvalSample(
                key=key,
                image=image,
                box=landmark_box(lm2d[None])[0].astype(np.float32),
                landmarks_2d=lm2d,
                attributes={"yaw": yaw_bin(yaw)},
                extras={"pt3d_68": pt3d, "pose_deg": {"pitch": pitch, "yaw": yaw, "roll": roll},
                        "pose_para": pose},
            )
