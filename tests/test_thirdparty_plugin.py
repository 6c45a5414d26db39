"""A plugin from another package, found only through its ``engine.plugins`` entry point.

The fixture package (tests/fixtures/thirdparty_plugin) is pip-installed into a temporary target
directory put on PYTHONPATH (its .dist-info carries the entry point), never into .venv.
"""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clips import make_clip

from engine.assets import REPO_ROOT

FIXTURE = Path(__file__).parent / "fixtures" / "thirdparty_plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("thirdparty")
    src = tmp / "src"
    shutil.copytree(FIXTURE, src)  # build in a copy: setuptools writes build/ and egg-info beside the sources
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)],
        check=True, capture_output=True, timeout=180,
    )
    assert list(target.glob("facelift_faces_csv-*.dist-info"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_not_installed_in_venv():
    res = subprocess.run([sys.executable, "-m", "engine", "plugins"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "faces_csv" not in res.stdout


def test_listed_by_plugins_command(installed):
    res = subprocess.run(
        [sys.executable, "-m", "engine", "plugins"], cwd=REPO_ROOT, env=installed, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    sinks = res.stdout[res.stdout.index("sinks:"):]
    assert "  faces_csv  (facelift_faces_csv.FacesCsvSink)" in sinks
    assert "min_score: float = default 0.0  -- count only faces at least this confident" in sinks


def test_pipeline_uses_it(installed, tmp_path):
    clip = make_clip(tmp_path / "face.mp4", frames=12)
    out = tmp_path / "faces.csv"
    config = tmp_path / "p.toml"
    config.write_text(
        f'[[sources]]\ntype = "file"\nid = "cam"\npath = "{clip}"\n'
        f'[[stages]]\ntype = "centerface"\ninput_size = 320\n'
        f'[[sinks]]\ntype = "faces_csv"\npath = "{out}"\nmin_score = 0.5\n'
    )
    res = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(config)], cwd=REPO_ROOT, env=installed, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert [int(r["index"]) for r in rows] == list(range(12)) and {r["stream"] for r in rows} == {"cam"}
    assert sum(int(r["faces"]) for r in rows) >= 11 and all(float(r["best_score"]) >= 0.5 for r in rows if r["best_score"])
    # its options are validated like a built-in's
    config.write_text(config.read_text().replace("min_score = 0.5", "min_score = 5"))
    res = subprocess.run(
        [sys.executable, "-m", "engine", "validate", str(config)], cwd=REPO_ROOT, env=installed, capture_output=True, text=True
    )
    assert res.returncode == 2 and "sinks[0].min_score: Input should be less than or equal to 1" in res.stderr
