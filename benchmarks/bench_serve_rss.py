"""Memory of ``python -m engine serve`` over many add/remove cycles of a stream.

Starts ``serve`` (centerface 160 px + tracker + file_sink, no sources), then ``--cycles`` times: adds a
file stream of the bundled sample (``max_frames`` frames), waits for it to end (every other cycle it is
removed while running instead), removes it, and reads the process's RSS (``/proc/PID/status``, Linux).
Prints the RSS after the warm-up cycles and at the end; a flat line means per-stream state is released.

    python benchmarks/bench_serve_rss.py --cycles 20
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.api_client import request

REPO = Path(__file__).resolve().parent.parent
CONFIG = """
[pipeline]
log_level = "WARNING"
[[stages]]
type = "centerface"
input_size = 160
[[stages]]
type = "tracker"
[[sinks]]
type = "file_sink"
directory = "out"
"""


def call(api: str, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    return request(api, method, path, body, timeout=60)


def rss_mib(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="cycles before the reference RSS")
    parser.add_argument("--frames", type=int, default=12, help="max_frames of each added stream")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        (Path(tmp) / "serve.toml").write_text(CONFIG)
        api = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", f"{tmp}/serve.toml", "--api",
                                 f"127.0.0.1:{port}"], cwd=REPO)
        try:
            for _ in range(600):
                try:
                    if request(api, "GET", "/ready", timeout=5)[0] == 200:
                        break
                except OSError:  # not listening yet
                    pass
                time.sleep(0.2)
            rss = [rss_mib(proc.pid)]
            spec = {"type": "file", "path": str(REPO / "samples" / "astronaut.mp4"), "max_frames": args.frames}
            for cycle in range(args.cycles):
                sid = f"cam{cycle % 4}"
                code, reply = call(api, "POST", "/streams", {**spec, "id": sid})
                assert code == 201, reply
                while cycle % 2 and call(api, "GET", f"/streams/{sid}")[1]["state"] != "ended":
                    time.sleep(0.05)
                code, reply = call(api, "DELETE", f"/streams/{sid}")
                assert code == 200 and reply["removed"], reply
                rss.append(rss_mib(proc.pid))
            ref = rss[min(args.warmup, len(rss) - 1)]
            print(f"RSS: {rss[0]:.1f} MiB serving with no streams, {ref:.1f} MiB after {args.warmup} add/remove "
                  f"cycles, {rss[-1]:.1f} MiB after {args.cycles} ({rss[-1] - ref:+.1f} MiB); "
                  f"per cycle: {' '.join(f'{r:.1f}' for r in rss[1:])}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


if __name__ == "__main__":
    main()
