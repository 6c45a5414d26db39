"""Command line: ``python -m engine run|serve|streams|validate|plugins|subscribe|keys|batch`` (also the
``facelift-engine`` script).

Exit codes: 0 success: every input processed (also after SIGINT/SIGTERM asked a run to stop); 1 a
plugin failed to start or a run ended abnormally; 2 invalid configuration or arguments; 3 some inputs
failed or were unusable (the others were processed; the summary names them); 130 interrupted (batch).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from engine.config import ConfigError, PipelineConfig, PluginSpec, load_config
from engine.plugin import ROLES, discover, get_plugin, role_of

log = logging.getLogger("engine")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if getattr(annotation, "__args__", None) is None else None
    return text or str(annotation).replace("typing.", "").replace("pathlib.", "")


def describe_plugins() -> dict[str, list[dict[str, Any]]]:
    """Installed plugins by role, each with its options (type, default, description); ``broken``: the
    entry points that failed to load, with the reason."""
    out: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}
    plugins = discover()
    for name, cls in sorted(plugins.items()):
        options = []
        for key, info in cls.Options.model_fields.items():
            if info.default is not PydanticUndefined:
                default = info.default
            elif info.default_factory is not None:
                default = info.default_factory()
            else:
                default = PydanticUndefined
            if isinstance(default, Path):
                default = str(default)
            options.append(
                {
                    "name": key,
                    "type": _type_name(info.annotation),
                    "required": info.is_required(),
                    "default": None if default is PydanticUndefined else default,
                    "description": info.description or "",
                }
            )
        doc = (cls.__doc__ or "").strip().splitlines()
        out[role_of(cls)].append(
            {"name": name, "class": f"{cls.__module__}.{cls.__qualname__}", "doc": doc[0] if doc else "", "options": options}
        )
    out["broken"] = [{"name": name, "error": error} for name, error in sorted(plugins.broken.items())]
    return out


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins = describe_plugins()
    if args.json:
        print(json.dumps(plugins, indent=2, default=str))
        return 0
    broken = plugins.pop("broken")
    for role, entries in plugins.items():
        print(f"{role}s:")
        for p in entries:
            print(f"  {p['name']}  ({p['class']})")
            if p["doc"]:
                print(f"      {p['doc']}")
            for o in p["options"]:
                default = "required" if o["required"] else f"default {o['default']!r}"
                print(f"      {o['name']}: {o['type']} = {default}  -- {o['description']}")
    if broken:
        print("broken (not loaded):")
        for b in broken:
            print(f"  {b['name']}: {b['error']}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from engine.checks import check_pipeline

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    errors, warnings = check_pipeline(config, deep=True)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if errors:
        print(str(ConfigError(errors, str(args.config))), file=sys.stderr)
        return 2
    parts = [f"{len(config.sources)} source(s)", f"{len(config.stages)} stage(s)", f"{len(config.sinks)} sink(s)"]
    note = f", {len(warnings)} warning(s)" if warnings else ""
    print(f"OK: {args.config} ({', '.join(parts)}{note})")
    return 0


PREVIEW_FRAMES, PREVIEW_EVERY = 8, 25  # --preview: up to 8 PNGs per stream, one every 25 frames


def add_preview_sink(config: PipelineConfig, directory: Path) -> None:
    """Append an ``overlay`` sink that only writes a few annotated PNGs per stream to ``directory``."""
    cls = get_plugin("overlay", "sink")
    options = cls.Options(directory=directory, video=False, preview_frames=PREVIEW_FRAMES, preview_every=PREVIEW_EVERY)
    path = f"sinks[{len(config.sinks)}]"
    config.sinks.append(PluginSpec(role="sink", type="overlay", cls=cls, options=options, path=path))


def _checked_config(path: str, require_sources: bool = True) -> PipelineConfig | None:
    """The config, checked as ``run`` and ``serve`` need it (stage order, inputs, bundles); None after
    printing what is wrong (the caller exits 2)."""
    from engine.checks import check_pipeline

    try:
        config = load_config(path, require_sources=require_sources)
        errors, _ = check_pipeline(config)
        if errors:
            raise ConfigError(errors, str(path))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None
    return config


def _print_summary(summary: dict, summary_json: str | None) -> None:
    from engine.metrics import format_summary

    print(format_summary(summary))
    if summary_json:
        Path(summary_json).write_text(json.dumps(summary, indent=2))


def cmd_run(args: argparse.Namespace) -> int:
    from engine.runtime import EXIT_INPUTS_FAILED, Pipeline, PipelineStartError, exit_code

    config = _checked_config(args.config)
    if config is None:
        return 2
    if args.preview:
        add_preview_sink(config, args.preview)
    setup_logging(args.log_level or config.pipeline.log_level)
    pipeline = Pipeline(config)
    try:
        summary = pipeline.run()
    except PipelineStartError as exc:
        log.error("%s", exc)
        return 1
    _print_summary(summary, args.summary_json)
    code = exit_code(summary)
    if code == EXIT_INPUTS_FAILED:
        failed = sum(len(v) for v in summary["source_errors"].values())
        print(f"error: {failed} input(s) failed or were unusable (the 'source' lines above name them and why); "
              f"fix or remove them (exit code {code})", file=sys.stderr)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.runtime import EXIT_FATAL, EXIT_OK, Pipeline, PipelineStartError
    from engine.service import ApiServer, InsecureAddress, parse_address, read_token

    config = _checked_config(args.config, require_sources=False)
    if config is None:
        return 2
    try:
        host, port = parse_address(args.api)
        token = read_token(args.token_file) if args.token_file else None
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.pipeline.log_level)
    pipeline = Pipeline(config, serve=True)
    try:
        api = ApiServer(pipeline, host, port, token, args.allow_insecure)
    except InsecureAddress as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # port in use, address not on this machine
        print(f"error: --api {args.api}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    api.start()
    try:
        summary = pipeline.run()
    except PipelineStartError as exc:
        log.error("%s", exc)
        return 1
    finally:
        api.stop()
    _print_summary(summary, args.summary_json)
    # a service's inputs come and go: one that failed is reported in its status, not in the exit code
    return EXIT_FATAL if summary.get("fatal") else EXIT_OK


def _api_request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """(HTTP status, decoded JSON) of one control API call; raises ``OSError`` when nothing answers."""
    from engine.api_client import request

    token = Path(args.token_file).read_text(encoding="utf-8").strip() if args.token_file else None
    return request(args.api, method, path, body, token, args.timeout)


def _option_value(text: str) -> Any:
    """``key=value`` values are TOML values (``10``, ``true``, ``"a b"``, ``{k = "v"}``); anything else is a string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def format_streams(streams: list[dict[str, Any]]) -> str:
    rows = [("ID", "STATE", "FRAMES", "FACES", "DROPS", "ERRORS", "FPS", "URI")]
    for s in streams:
        rows.append((s["id"], s["state"], str(s["frames"]), str(s["faces"]), str(s["drops"]), str(s["errors"]),
                     f"{s['fps']:.1f}", s.get("uri") or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    lines += [f"{s['id']}: last error: {s['last_error']}" for s in streams if s.get("last_error")]
    return "\n".join(lines)


def cmd_streams(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    if args.action == "add" and not args.json and not (args.id and args.type):
        print("error: streams add: give ID TYPE [KEY=VALUE ...] or --spec JSON", file=sys.stderr)
        return 2
    try:
        if args.action == "add":
            if args.json:
                try:
                    spec = json.loads(args.json)
                except ValueError as exc:
                    print(f"error: --json: {exc}", file=sys.stderr)
                    return 2
            else:
                spec = {"type": args.type, "id": args.id}
                for item in args.options:
                    key, sep, value = item.partition("=")
                    if not sep or not key:
                        print(f"error: {item!r}: expected KEY=VALUE (e.g. path=clip.mp4)", file=sys.stderr)
                        return 2
                    spec[key] = _option_value(value)
            code, reply = _api_request(args, "POST", "/streams", spec)
        elif args.action == "rm":
            code, reply = _api_request(args, "DELETE", f"/streams/{quote(args.id, safe='')}?wait_s={args.wait}")
        else:
            code, reply = _api_request(args, "GET", "/streams")
    except ValueError as exc:  # an --api that is not HOST:PORT
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # nothing listening, token file missing
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        print(f"error: no answer from the control API at {args.api} ({reason}); is 'python -m engine serve' "
              "running there (--api)?", file=sys.stderr)
        return 1
    if code >= 400:
        detail = reply.get("errors") or [reply.get("detail")] if isinstance(reply, dict) else [reply]
        for line in detail:
            print(f"error: {line}", file=sys.stderr)
        return 2 if code < 500 else 1
    if args.json_out:
        print(json.dumps(reply, indent=2))
    elif args.action == "ls":
        print(format_streams(reply) if reply else "no streams")
    elif args.action == "add":
        print(f"added {reply['id']} ({reply['state']})")
    elif code == 202:
        print(f"{reply['id']}: still stopping after {args.wait:g} s; it is removed once it has drained")
    else:
        print(f"removed {reply['id']}: {reply['frames']} frames, {reply['faces']} faces, {reply['drops']} dropped, "
              f"{reply['errors']} errors ({reply['state']})")
    return 0


def cmd_subscribe(args: argparse.Namespace) -> int:
    from engine.client import Subscriber
    from engine.messages import EndOfStream, to_json_obj

    setup_logging(args.log_level or "WARNING")
    out = open(args.save, "w", encoding="utf-8") if args.save else None
    received = 0
    sub = None
    try:
        with Subscriber(
            args.endpoint,
            topics=args.topic or None,
            kind="pull" if args.pull else "sub",
            mode="bind" if args.bind else "connect",
            timeout_s=args.timeout,
            stop_after_eos=args.eos,
            skip_invalid=True,  # one bad message must not end the session: logged and counted
            max_message_bytes=args.max_message_mb << 20,
            curve_server_key=args.curve_server_key,
            curve_secret=args.curve_secret,
        ) as sub:
            for msg in sub:
                if out is not None:
                    out.write(json.dumps(to_json_obj(msg), separators=(",", ":")) + "\n")
                if isinstance(msg, EndOfStream):
                    lost = ", ".join(f"{k} {v}" for k, v in msg.lost.items() if v)
                    print(f"{msg.stream_id} end of stream ({msg.frames} frames sent, "
                          f"{sub.received.get(msg.stream_id, 0)} received, {sub.lost[msg.stream_id]} lost here, "
                          f"{msg.dropped} dropped by the sink{', upstream: ' + lost if lost else ''})")
                    continue
                received += 1
                if out is None or args.verbose:
                    scores = " ".join(f"{f.score:.2f}" for f in msg.faces)
                    pts = "-" if msg.pts is None else f"{msg.pts:.3f}"
                    print(f"{msg.stream_id} #{msg.index} pts {pts} {msg.width}x{msg.height} "
                          f"faces {len(msg.faces)} [{scores}] latency {1000 * (time.time() - msg.time):.0f} ms")
                if args.count and received >= args.count:
                    break
    except KeyboardInterrupt:
        pass
    except (OSError, ValueError) as exc:  # a bad endpoint or key file (zmq.ZMQError is an OSError)
        print(f"error: {args.endpoint}: {exc}", file=sys.stderr)
        return 2
    finally:
        if out is not None:
            out.close()
    invalid = sub.invalid if sub is not None else 0
    lost = sum(sub.lost.values()) if sub is not None else 0
    print(f"received {received} frame message(s)" + (f", {invalid} invalid message(s) skipped" if invalid else "")
          + (f", {lost} lost (sent but not received, per the end-of-stream counts)" if lost else ""), file=sys.stderr)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from engine.curve import create_keys

    public, secret = create_keys(args.folder, args.name)
    print(f"public key: {public}  (give it to the other side)\nsecret key: {secret}  (keep it private)")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from engine.batch import BatchOptions, DatasetError, list_celebvhq, list_files, run_batch

    setup_logging(args.log_level or "INFO")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {args.out} is a file; give a folder (created if missing)", file=sys.stderr)
        return 2
    try:
        clips = list_celebvhq(args.celebvhq, args.clips_dir) if args.celebvhq else list_files(args.input)
        totals = run_batch(args.config, clips, args.out, BatchOptions(
            workers=args.workers, batch_frames=args.batch_size, retry_failed=args.retry_failed, ray=args.ray,
            ray_actors=args.ray_actors, progress=not args.no_progress))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished clips are kept in {args.out}; run the same command again to resume",
              file=sys.stderr)
        return 130
    except OSError as exc:  # e.g. --out not writable
        print(f"error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(totals["summary_markdown"])
    print(f"results in {args.out}/clips/, summary in {args.out}/summary.csv and summary.md")
    return 3 if totals["failed"] or totals["skipped_failed"] or totals["missing"] else 0


EXIT_CODES_HELP = """exit codes:
  0    every input processed (also after SIGINT/SIGTERM asked a run to stop)
  1    a plugin failed to start, or a run ended abnormally
  2    invalid configuration or arguments
  3    some inputs failed or were unusable (the others were processed; the summary names them)
  130  batch interrupted with Ctrl-C (finished clips are kept; the same command resumes)

'python -m engine COMMAND --help' describes a command; README.md and docs/ the rest."""


def build_parser() -> argparse.ArgumentParser:
    from engine import __version__

    # plain text (the module docstring is reST for the docs); the exit codes keep their line breaks
    parser = argparse.ArgumentParser(
        prog="python -m engine", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="FaceLift engine: run, check and inspect 3D facial landmark pipelines, receive their "
        "results,\nand run dataset batch jobs (also installed as the facelift-engine command).",
        epilog=EXIT_CODES_HELP)
    parser.add_argument("--version", action="version", version=f"facelift-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a pipeline until its sources end (Ctrl-C stops cleanly)")
    p.add_argument("config", type=Path, help="pipeline.toml")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override [pipeline].log_level")
    p.add_argument("--summary-json", metavar="PATH", help="also write the run summary as JSON")
    p.add_argument("--preview", metavar="DIR", type=Path, help="also save a few annotated frames per stream as PNG in DIR")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="run a pipeline as a service: streams are added and removed over an HTTP API",
                       description="Run a pipeline that keeps running when its sources end (it may have none); "
                       "streams are added and removed at run time through the control API (POST/GET /streams, "
                       "DELETE /streams/ID, /healthz, /ready, /metrics) or 'python -m engine streams'. "
                       "SIGINT/SIGTERM drain and stop.")
    p.add_argument("config", type=Path, help="pipeline.toml ([[sources]] optional)")
    p.add_argument("--api", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address of the control API (default 127.0.0.1:8080; another than loopback needs --token-file)")
    p.add_argument("--token-file", metavar="FILE", help="bearer token that /streams requests must send")
    p.add_argument("--allow-insecure", action="store_true",
                   help="bind a non-loopback --api without a token (anyone reaching it controls the streams)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override [pipeline].log_level")
    p.add_argument("--summary-json", metavar="PATH", help="also write the summary at exit as JSON")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("streams", help="add, remove and list the streams of a running 'serve' (control API client)")
    actions = p.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", default="127.0.0.1:8080", metavar="HOST:PORT", help="the serve --api address")
    common.add_argument("--token-file", metavar="FILE", help="bearer token file (the serve --token-file)")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    common.add_argument("--json", dest="json_out", action="store_true", help="print the API's JSON answer")
    a = actions.add_parser("add", parents=[common], help="add a stream: ID TYPE KEY=VALUE... as in [[sources]]",
                           description="Add a stream, e.g. 'streams add cam1 stream url=rtsp://10.0.0.5/live' or "
                           "'streams add clip file path=/data/a.mp4 realtime=true'. Values are TOML values "
                           "(numbers, true/false, quoted strings); anything else is a string.")
    a.add_argument("id", nargs="?", help="stream id")
    a.add_argument("type", nargs="?", help="source type: file, stream, webcam, ...")
    a.add_argument("options", nargs="*", metavar="KEY=VALUE", help="the source's options")
    a.add_argument("--spec", dest="json", metavar="JSON", help="the whole spec as JSON instead of ID TYPE KEY=VALUE")
    r = actions.add_parser("rm", parents=[common], help="drain and remove a stream")
    r.add_argument("id")
    r.add_argument("--wait", type=float, default=30.0, help="seconds the API waits for the stream to drain")
    actions.add_parser("ls", parents=[common], help="list streams with their state and counters")
    p.set_defaults(func=cmd_streams)

    p = sub.add_parser("validate", help="check a pipeline.toml without running it")
    p.add_argument("config", type=Path)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plugins", help="list installed plugins and their options")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("subscribe", help="print or save the messages a zmq sink sends")
    p.add_argument("endpoint", help="e.g. tcp://127.0.0.1:5555")
    p.add_argument("--topic", action="append", help="stream id to receive (repeatable; default all)")
    p.add_argument("--pull", action="store_true", help="PULL socket (for a zmq_push sink) instead of SUB")
    p.add_argument("--bind", action="store_true", help="bind the endpoint (for a sink in connect mode)")
    p.add_argument("--save", metavar="OUT.jsonl", help="write the messages as JSON Lines")
    p.add_argument("--count", type=int, help="stop after this many frame messages")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without a message")
    p.add_argument("--verbose", action="store_true", help="print a line per message also when saving")
    p.add_argument("--eos", type=int, metavar="N", help="stop after N streams have ended (end-of-stream messages)")
    p.add_argument("--max-message-mb", type=int, default=64, help="refuse larger messages (ZMQ_MAXMSGSIZE)")
    p.add_argument("--curve-server-key", metavar="FILE", help="CURVE: the sink's public key file")
    p.add_argument("--curve-secret", metavar="FILE", help="CURVE: this client's key file (if the sink admits only known keys)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_subscribe)

    p = sub.add_parser("keys", help="create a CURVE key pair (FOLDER/NAME.key public, NAME.key_secret secret)")
    p.add_argument("folder", type=Path)
    p.add_argument("name")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("batch", help="run the config's stages over a dataset of clips (resumable; docs/batch.md)")
    p.add_argument("--config", type=Path, required=True, help="pipeline.toml (its [[stages]] are run)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="DIR|GLOB", help="a folder of clips, a glob ('clips/**/*.mp4') or one file")
    src.add_argument("--celebvhq", metavar="ROOT", help="CelebV-HQ root (celebvhq_info.json + <clip_id>.mp4 files)")
    p.add_argument("--clips-dir", help="with --celebvhq: the folder of the .mp4 files (default: found under ROOT)")
    p.add_argument("--out", required=True, help="output folder (results, failures.json, manifest, summary)")
    p.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)),
                   help="decode processes (local path)")
    p.add_argument("--batch-size", type=int, default=32, help="frames per inference batch, across clips")
    p.add_argument("--retry-failed", action="store_true", help="retry the clips recorded in failures.json")
    p.add_argument("--ray", metavar="ADDRESS", help="run on Ray: 'auto' (running cluster), an address, or 'local'")
    p.add_argument("--ray-actors", type=int, help="inference actors (default: one per GPU, else 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("plugins", "validate"):
        setup_logging("WARNING")
    try:
        return args.func(args)
    except (ImportError, TypeError) as exc:
        if not str(exc).startswith("plugin "):
            raise
        print(f"error: {exc}", file=sys.stderr)  # a broken third-party plugin (engine.plugin.discover)
        return 1


if __name__ == "__main__":
    sys.exit(main())
