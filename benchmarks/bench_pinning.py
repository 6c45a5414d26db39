"""``[pipeline] cpu_pinning`` off vs auto: the default pipeline's end-to-end fps, interleaved rounds.

    nice -n 19 python benchmarks/bench_pinning.py [--clip PATH] [--rounds 3] [--json out.json]

pipeline.toml's stages on one clip (default: the shared liveportrait_d10.mp4, decode included), with
the detector's ``detect_every`` as committed and with 1 (detect every frame), each with pinning off and
auto, interleaved so a change in the machine's speed hits both alike; prints every round and the best.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from engine.affinity import plan, usable_cpus
from engine.assets import shared_asset
from engine_runs import run_engine, stages_with


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=None, help="default: shared liveportrait_d10.mp4")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clip = args.clip or shared_asset("videos") / "liveportrait_d10.mp4"
    runs: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for label, detect_every in (("default", None), ("detect every frame", 1)):
            for mode in ("off", "auto"):
                summary, _ = run_engine(clip, stages_with(detect_every=detect_every), cpu_pinning=mode)
                runs.setdefault(f"{label}, cpu_pinning={mode}", []).append(round(summary["fps"], 1))
    print(f"{clip.name}, {len(usable_cpus())} usable CPUs, auto plan for one dedicated stage: "
          f"{[sorted(g) for g in plan('auto', 1) or []]}")
    for key, fps in runs.items():
        print(f"  {key:38s} best {max(fps):6.1f} fps   rounds {fps}")
    if args.json:
        args.json.write_text(json.dumps({"clip": str(clip), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
