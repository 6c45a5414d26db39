"""benchmarks/gpu_check.py: its --dry-run (the GPU run's code paths on CPU, tiny sizes) writes every section
with real figures, or for CUDA-only parts a recorded reason; and the stream runs need no installed project."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(out.parent.glob("*.part.json")), "step files are merged into the report"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_dry_run_writes_every_section(report):
    assert report["finished"] and report["dry_run"]
    steps = report["steps"]
    assert list(steps) == ["environment", "backend_tests", "throughput", "streams", "tensorrt"]
    for name, step in steps.items():
        assert step["status"] in ("ok", "skipped"), (name, step.get("error"), step.get("log_tail"))
        assert step["seconds"] <= step["budget_s"] + 5

    env = steps["environment"]
    assert env["modules"]["torch"][0].isdigit() and "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert isinstance(env["cuda_available"], bool) and isinstance(env["tensorrt_importable"], bool)

    tests = steps["backend_tests"]
    counts = tests["counts"]
    assert tests["returncode"] == 0 and counts["failed"] == counts["error"] == 0
    assert counts["passed"] > 0 if tests["cuda_tests_ran"] else (counts["skipped"] > 0 and "CUDA" in tests["reason"])

    rows = steps["throughput"]["rows"]
    assert {r["batch"] for r in rows if r["backend"] == "torch"} == {1, 2, 4}
    assert {r["batch"] for r in rows if r["backend"] == "onnxruntime"} == {1, 4}
    assert all(r["faces_per_s"] > 0 and r["ms_per_call"] > 0 for r in rows)
    assert steps["throughput"]["peak_faces_per_s"] > 0

    streams = steps["streams"]
    assert streams["streams"] == 2 and streams["clip"]["frames"] > 0
    assert set(streams["runs"]) == {"decode_only", "detect_every_frame", "tracking_detect_every_10", "tracking_live_30fps"}
    for name, run in streams["runs"].items():
        assert run["fps"] > 0 and run["frames"] == 2 * 6 and run["errors"] == 0, (name, run)
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p95"], name
        if name != "decode_only":
            assert run["faces"] > 0 and run["stage_latency_ms"]["landmarks"]["p95"] > 0, (name, run)

    trt = steps["tensorrt"]
    if trt["status"] == "skipped":
        assert trt["reason"].startswith(("tensorrt not importable", "tensorrt imports but"))
    else:
        assert all(r["faces_per_s"] > 0 for r in trt["rows"])


def test_pipeline_plugins_without_installed_entry_points(monkeypatch):
    """On the GPU machine the project is on PYTHONPATH, not installed: no entry points, pyproject.toml's names."""
    import engine.plugin
    from plugins.landmarks.stage import LandmarkStage
    from plugins.sources.pyav_source import FileSource

    gpu_check = _load_script()
    monkeypatch.setattr(engine.plugin, "discover", lambda: engine.plugin.Plugins())
    plugins, origin = gpu_check.pipeline_plugins()
    assert origin.startswith("pyproject.toml") and plugins["file"] is FileSource and plugins["landmarks"] is LandmarkStage
    assert set(gpu_check.PIPELINE_PLUGINS) <= set(plugins)


def test_step_timeout_keeps_partial_figures(tmp_path):
    """A step over its budget is killed with its process group; run_process reports it as None."""
    gpu_check = _load_script()
    rc, tail = gpu_check.run_process([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"], 2)
    assert rc is None and tail == ["started"]
