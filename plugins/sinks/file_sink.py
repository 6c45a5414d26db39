"""``file_sink``: one file per stream in a directory, msgpack (default) or JSON Lines.

``msgpack`` files are a plain sequence of :mod:`engine.messages` maps (msgpack objects delimit
themselves), readable with ``msgpack.Unpacker`` or ``engine.client.read_messages``; ``jsonl`` files have
one JSON message per line with arrays as lists. Each file ends with the stream's end-of-stream message.
A stream is written to ``<name>.partial`` and renamed to its final name only after its end-of-stream
message is flushed, so a file at its final name is always complete: a run killed (SIGKILL) or aborted
mid-stream leaves only the ``.partial`` file. Two streams that would share a file name (``cam 1`` and
``cam/1``), and existing files with ``overwrite = false``, are refused before the run starts.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import IO, Literal

import msgpack
from pydantic import Field

from engine.frame import Frame
from engine.messages import eos_obj, frame_obj
from engine.plugin import PluginOptions, Sink, path_option

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


def stream_filename(stream_id: str, fmt: str) -> str:
    """File name of a stream: its id with path separators and odd characters replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stream_id).strip(".") + "." + fmt


class FileSink(Sink):
    """Write every frame's message to a file per stream (msgpack or JSON Lines)."""

    name = "file_sink"

    class Options(PluginOptions):
        directory: Path = path_option(Path("out"), description="Output folder (created); one file per stream.")
        format: Literal["msgpack", "jsonl"] = Field("msgpack", description="file format")
        overwrite: bool = Field(True, description="replace existing files of the same streams")

    options: Options

    def __init__(self, options: Options):
        super().__init__(options)
        self.files: dict[str, IO] = {}
        self.counts: dict[str, int] = {}
        self.refused: set[str] = set()  # streams whose file could not be opened (reported once)
        self._owner: dict[Path, str] = {}  # final path -> the stream writing it
        self._packer = msgpack.Packer(use_bin_type=True)

    @classmethod
    def check_streams(cls, options: PluginOptions, stream_ids: list[str]) -> list[str]:
        assert isinstance(options, cls.Options)
        problems: list[str] = []
        owners: dict[str, str] = {}
        for sid in stream_ids:
            name = stream_filename(sid, options.format)
            if name in owners:
                problems.append(f"directory: streams {owners[name]!r} and {sid!r} would both write {name}; "
                                "give the sources ids that differ in letters, digits, '.', '_' or '-'")
            owners.setdefault(name, sid)
            if not options.overwrite and (options.directory / name).exists():
                problems.append(f"overwrite: {options.directory / name} exists; remove it or set overwrite = true")
        return problems

    def start(self) -> None:
        self.options.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, stream_id: str) -> Path:
        return self.options.directory / stream_filename(stream_id, self.options.format)

    def _file(self, stream_id: str) -> IO | None:
        f = self.files.get(stream_id)
        if f is None:
            if stream_id in self.refused:
                return None
            path = self.path_for(stream_id)
            problem = None
            if self._owner.get(path, stream_id) != stream_id:
                problem = f"{path} is already written by stream {self._owner[path]!r}"
            elif path.exists() and not self.options.overwrite:
                problem = f"{path} exists (set overwrite = true to replace it)"
            if problem:  # reported once; the stream's frames are counted as sink errors by the runtime
                self.refused.add(stream_id)
                raise FileExistsError(f"file_sink: stream {stream_id!r} not written: {problem}")
            self._owner[path] = stream_id
            partial = path.with_name(path.name + PARTIAL_SUFFIX)
            f = open(partial, "wb") if self.options.format == "msgpack" else open(partial, "w", encoding="utf-8")
            self.files[stream_id] = f
            self.counts[stream_id] = 0
            log.info("file_sink: writing stream %r to %s", stream_id, partial)
        return f

    def _write_obj(self, stream_id: str, obj: dict) -> None:
        f = self._file(stream_id)
        if f is None:
            raise FileExistsError(f"file_sink: stream {stream_id!r} refused (see the first error)")
        if self.options.format == "msgpack":
            f.write(self._packer.pack(obj))
        else:
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def write(self, frame: Frame) -> None:
        json_arrays = self.options.format == "jsonl"
        self._write_obj(frame.stream_id, frame_obj(frame, json_arrays=json_arrays))
        self.counts[frame.stream_id] += 1

    def end_of_stream(self, stream_id: str) -> None:
        if stream_id in self.refused:
            self.refused.discard(stream_id)  # a later stream with this id is checked afresh
            return
        self._write_obj(stream_id, eos_obj(stream_id, self.counts.pop(stream_id, 0), self.counts_of(stream_id)))
        f = self.files.pop(stream_id)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        path = self.path_for(stream_id)
        self._owner.pop(path, None)  # the file is complete; nothing is kept per ended stream
        os.replace(path.with_name(path.name + PARTIAL_SUFFIX), path)  # complete: now at its final name

    def close(self) -> None:
        for stream_id, f in list(self.files.items()):
            try:
                f.close()  # no end-of-stream (abort): the file stays at <name>.partial
                log.warning("file_sink: stream %r incomplete, left at %s%s", stream_id, self.path_for(stream_id),
                            PARTIAL_SUFFIX)
            except OSError:
                log.exception("file_sink: closing %s%s failed", self.path_for(stream_id), PARTIAL_SUFFIX)
        self.files.clear()
