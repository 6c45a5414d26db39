"""Session set-up. The shared assets folder (``$FACELIFT_SHARED`` or ``../shared``: real videos, photos,
ICT FaceKit, teacher weights) is not in the repository. Without it the tests that need it are skipped
with one reason (and one line in the header and at the end), not errored one by one: the engine's own
tests still run in a fresh clone or a CI job without the assets, and the message says what to set.
``FACELIFT_REQUIRE_SHARED=1`` makes a missing folder stop the session at the start instead (for CI jobs
that must run everything)."""

import contextlib
import logging
import os
from pathlib import Path

import pytest

# torch's compiler stack imports triton, which bundles its own LLVM; importing it for the first time after a
# test has rendered with Mesa's llvmpipe (moderngl, its LLVM) segfaults (seen: test_pseudolabel, then
# timm -> torchvision -> torch._dynamo in test_evaluate). Importing it first is safe, whatever the test order.
with contextlib.suppress(ImportError):
    import torch._dynamo  # noqa: F401

from engine.assets import shared_assets_problem, shared_dir

logging.basicConfig(level=logging.INFO)

PROBLEM = shared_assets_problem()


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared with its assets (videos, images, ICT FaceKit, teacher weights)."""
    if PROBLEM:
        pytest.skip(PROBLEM)
    return shared_dir()


def pytest_report_header(config: pytest.Config) -> str:
    return f"shared assets: {PROBLEM}" if PROBLEM else f"shared assets: {shared_dir() / 'assets'}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not PROBLEM:
        return
    if os.environ.get("FACELIFT_REQUIRE_SHARED") == "1":
        pytest.exit(PROBLEM, returncode=pytest.ExitCode.USAGE_ERROR)
    skip = pytest.mark.skip(reason=PROBLEM)
    for item in items:
        if "shared" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # tests (and helpers such as tiny_dataset) that open a shared file directly, not through the fixture:
    # engine.assets.shared_asset's FileNotFoundError becomes the same skip
    outcome = yield
    report = outcome.get_result()
    if PROBLEM and report.failed and call.excinfo is not None and _missing_shared(call.excinfo.value):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {PROBLEM}")


def _missing_shared(exc: BaseException | None) -> bool:
    root = str(shared_dir())
    while exc is not None:
        if isinstance(exc, FileNotFoundError) and root in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if PROBLEM and PROBLEM in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} test(s) skipped: {PROBLEM}", yellow=True, bold=True)
