"""Dataset batch job on Ray (a local cluster started by the job): same outputs as the local path,
and resume works (done clips skipped, temp files cleaned)."""

from __future__ import annotations

import json
import shutil

import pytest

from celebvhq_fixture import make_mini_celebvhq
from engine.batch import BatchOptions, list_celebvhq, run_batch
from test_batch import CONFIG, npz_bytes

pytest.importorskip("ray")


def test_ray_path_matches_local_and_resumes(tmp_path):
    data = make_mini_celebvhq(tmp_path / "CelebV-HQ", clips=12, corrupt=2, truncated=0)
    config = tmp_path / "batch.toml"
    config.write_text(CONFIG)
    clips = list_celebvhq(data["root"])
    local = tmp_path / "local"
    run_batch(config, clips, local, BatchOptions(workers=1, progress=False))

    out = tmp_path / "ray"
    (out / "clips").mkdir(parents=True)
    half = data["good"][: len(data["good"]) // 2]
    for cid in half:  # a previous run finished these
        shutil.copy(local / "clips" / f"{cid}.npz", out / "clips")
    (out / "clips" / f".{data['good'][-1]}.npz.4242.tmp").write_bytes(b"partial write of a killed run")

    totals = run_batch(config, clips, out, BatchOptions(ray="local", ray_clips_per_batch=3, progress=False))
    assert (totals["ok"], totals["done"], totals["failed"]) == (len(data["good"]) - len(half), len(half), 2)
    assert npz_bytes(out) == npz_bytes(local)  # byte-identical to the local path
    assert not list(out.rglob("*.tmp"))
    assert sorted(json.loads((out / "failures.json").read_text())) == data["corrupt"]
    run = json.loads((out / "manifest.json").read_text())["runs"][-1]
    assert run["options"]["ray"] == "local" and run["status"] == "finished"
