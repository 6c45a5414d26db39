"""Multiface reader (layout of github.com/facebookresearch/multiface, documentation/DATA_STRUCTURE.md),
restricted to the FaceLift evaluation subset (seed supplementary, section B).

Per entity folder ``m--<date>--<time>--<id>--GHS``: ``KRT`` holds every camera as a name line, three
intrinsic rows, one distortion row, three extrinsic rows ``[R_C | t_C]`` and a blank line;
``tracked_mesh/<seq>/<frame>.bin`` (float32 V x 3) or ``.obj`` is the mesh in the head frame and
``<frame>_transform.txt`` its head pose ``[R_f | t_f]`` (world = R_f X + t_f), so the pixel projection
is ``K [R_C R_f | R_C t_f + t_C]``, exactly as the dataset's own ``dataset.py`` builds ``M``.
Multiface has no face boxes; the box is the tight box of the projected mesh (or of ``box_vertices``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from training.evaluation.readers.base import EvalSample, Reader, pinhole_projection, project_points, read_obj

# The six sequences of the seed's subset (expression folders are named E0xx_<Words_With_Underscores>).
SEED_SEQUENCES = (
    "Neutral_Eyes_Open",
    "Relaxed_Mouth_Open",
    "Open_Lips_Mouth_Stretch_Nose_Wrinkled",
    "Mouth_Nose_Left",
    "Mouth_Open_Jaw_Right_Show_Teeth",
    "Suck_Cheeks_In",
)
EXCLUDED_CAMERAS = ("400055", "400010", "400067", "400025", "400008", "400070")  # face not visible
FRAME_STEP = 15

LAYOUT = """\
<root>/                                   (an entity folder, or a folder of entity folders)
  m--<date>--<time>--<id>--GHS/
    KRT                                   camera calibration (name, K rows, distortion, [R|t] rows)
    images/<E0xx_Sequence_Name>/<camera>/<frame>.png
    tracked_mesh/<E0xx_Sequence_Name>/<frame>.bin | <frame>.obj, <frame>_transform.txt
Sequences used: """ + ", ".join(SEED_SEQUENCES)


def canonical_sequence(name: str) -> str:
    """'E013_Open_Lips_Mouth_Stretch_Nose_Wrinkled' / 'Open Lips ...' -> 'open_lips_mouth_stretch_...'."""
    name = re.sub(r"^E\d+[_\s-]*", "", name)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def read_krt(path: Path) -> dict[str, dict[str, np.ndarray]]:
    cams: dict[str, dict[str, np.ndarray]] = {}
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    i = 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        name = lines[i]
        rows = [[float(x) for x in ln.split()] for ln in lines[i + 1 : i + 8]]
        if len(rows) < 7 or any(len(r) != n for r, n in zip(rows, (3, 3, 3, len(rows[3]), 4, 4, 4))):
            raise ValueError(f"{path}: camera {name!r} is not name + 3 K rows + distortion + 3 [R|t] rows")
        cams[name] = {"K": np.array(rows[:3]), "dist": np.array(rows[3]), "Rt": np.array(rows[4:7])}
        i += 8
    return cams


class MultifaceReader(Reader):
    name = "Multiface"
    layout = LAYOUT

    def __init__(self, root: str | Path, sequences=SEED_SEQUENCES, exclude_cameras=EXCLUDED_CAMERAS,
                 frame_step: int = FRAME_STEP, box_vertices: np.ndarray | None = None):
        super().__init__()
        root = self._require(Path(root))
        self.entities = [root] if (root / "KRT").exists() else sorted(
            p for p in root.iterdir() if p.is_dir() and (p / "KRT").exists()
        )
        if not self.entities:
            raise self._layout_error(root / "KRT", "no entity folder with a KRT file found")
        self.sequences = {canonical_sequence(s) for s in sequences}
        self.exclude = {str(c) for c in exclude_cameras}
        self.frame_step = frame_step
        self.box_vertices = box_vertices
        self.missing_sequences: dict[str, list[str]] = {}
        self._faces = None

    def _layout_error(self, path: Path, hint: str):
        from training.evaluation.readers.base import DatasetLayoutError

        return DatasetLayoutError(self.name, path, self.layout, hint)

    def _sequence_dirs(self, entity: Path) -> list[Path]:
        mesh_root = self._require(entity / "tracked_mesh")
        self._require(entity / "images")
        found = {canonical_sequence(p.name): p for p in mesh_root.iterdir() if p.is_dir()}
        missing = sorted(self.sequences - set(found))
        if missing:
            self.missing_sequences[entity.name] = missing
        dirs = [found[s] for s in sorted(self.sequences & set(found))]
        if not dirs:
            raise self._layout_error(mesh_root / "E001_Neutral_Eyes_Open", "none of the subset's sequences found")
        return dirs

    def faces(self) -> np.ndarray:
        """Triangles of the tracked-mesh topology (from the first .obj under tracked_mesh/)."""
        if self._faces is None:
            for entity in self.entities:
                obj = next((entity / "tracked_mesh").glob("*/*.obj"), None)
                if obj is not None:
                    self._faces = read_obj(obj)[1]
                    break
            else:
                raise self._layout_error(self.entities[0] / "tracked_mesh" / "<sequence>" / "<frame>.obj",
                                         "faces come from any tracked-mesh .obj; none found")
        return self._faces

    @staticmethod
    def frames(seq_dir: Path) -> list[str]:
        stems = {p.stem for p in seq_dir.iterdir() if p.suffix in (".bin", ".obj")}
        return sorted(stems, key=lambda s: (len(s), s))

    def _load_vertices(self, seq_dir: Path, frame: str) -> np.ndarray:
        b = seq_dir / f"{frame}.bin"
        if b.exists():
            return np.fromfile(b, dtype=np.float32).reshape(-1, 3)
        return read_obj(seq_dir / f"{frame}.obj")[0]

    def _samples(self) -> Iterator[EvalSample]:
        self.missing_sequences = {}
        for entity in self.entities:
            krt = read_krt(self._require(entity / "KRT"))
            cameras = sorted(c for c in krt if c not in self.exclude)
            for seq_dir in self._sequence_dirs(entity):
                for frame in self.frames(seq_dir)[:: self.frame_step]:
                    key = f"{entity.name}/{seq_dir.name}/{frame}"
                    pose_path = seq_dir / f"{frame}_transform.txt"
                    try:
                        verts = self._load_vertices(seq_dir, frame)
                        pose = np.loadtxt(pose_path).reshape(-1, 4)[:3]
                    except (OSError, ValueError) as exc:
                        self._skip(key, f"bad mesh or {pose_path.name}: {exc}")
                        continue
                    r_f, t_f = pose[:, :3], pose[:, 3]
                    for cam in cameras:
                        image = entity / "images" / seq_dir.name / cam / f"{frame}.png"
                        if not image.exists():
                            self._skip(f"{key}/{cam}", f"missing {image}")
                            continue
                        r_c, t_c = krt[cam]["Rt"][:, :3], krt[cam]["Rt"][:, 3]
                        rot = r_c @ r_f
                        proj = pinhole_projection(krt[cam]["K"], rot, r_c @ t_f + t_c)
                        pts = verts if self.box_vertices is None else verts[self.box_vertices]
                        px = project_points(proj, pts)
                        yield EvalSample(
                            key=f"{key}/{cam}",
                            image=image,
                            box=np.concatenate([px.min(0), px.max(0)]).astype(np.float32),
                            vertices=verts,
                            projection=proj,
                            attributes={"sequence": canonical_sequence(seq_dir.name), "camera": cam,
                                        "entity": entity.name},
                            # Mesh-frame axes are the capture's, not ICT's: pose only as a relative check.
                            extras={"mesh_to_camera": rot, "frame": frame, "distortion": krt[cam]["dist"]},
                        )
