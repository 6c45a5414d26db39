"""Without the shared assets folder the suite says so once and skips what needs it (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from engine.assets import REPO_ROOT


def _pytest(tmp_path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_lifting.py"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FACELIFT_SHARED": str(tmp_path / "nowhere"), **env})


def test_missing_shared_assets_skip_with_one_message(tmp_path):
    run = _pytest(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    expected = f"shared assets missing: no folder {tmp_path / 'nowhere' / 'assets'} (FACELIFT_SHARED is set to"
    assert f"shared assets: {expected}" in run.stdout  # the header
    summary = [line for line in run.stdout.splitlines() if "test(s) skipped: shared assets missing" in line]
    assert len(summary) == 1 and "set FACELIFT_SHARED=/path/to/shared" in summary[0]
    assert " skipped" in run.stdout.splitlines()[-1] and "error" not in run.stdout.splitlines()[-1]


def test_require_shared_stops_the_session_at_start(tmp_path):
    run = _pytest(tmp_path, FACELIFT_REQUIRE_SHARED="1")
    assert run.returncode == 4 and "shared assets missing" in run.stdout + run.stderr
