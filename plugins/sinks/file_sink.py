"""``file_sink``: one file per stream in a directory, msgpack (default) or JSON Lines.

``msgpack`` files are a plain sequence of :mod:`engine.messages` maps (msgpack objects delimit
themselves), readable with ``msgpack.Unpacker`` or ``engine.client.read_messages``; ``jsonl`` files have
one JSON message per line with arrays as lists. Each file ends with the stream's end-of-stream message,
so a complete file can be told from a cut-off one. A stream's file is flushed and closed at its end,
and all files on shutdown.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import IO, Literal

import msgpack
from pydantic import Field

from engine.frame import Frame
from engine.messages import eos_obj, frame_obj
from engine.plugin import PluginOptions, Sink, path_option

log = logging.getLogger(__name__)


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
        self._packer = msgpack.Packer(use_bin_type=True)

    def start(self) -> None:
        self.options.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, stream_id: str) -> Path:
        return self.options.directory / stream_filename(stream_id, self.options.format)

    def _file(self, stream_id: str) -> IO:
        f = self.files.get(stream_id)
        if f is None:
            path = self.path_for(stream_id)
            if path.exists() and not self.options.overwrite:
                raise FileExistsError(f"{path} exists (set overwrite = true to replace it)")
            binary = self.options.format == "msgpack"
            f = open(path, "wb") if binary else open(path, "w", encoding="utf-8")
            self.files[stream_id] = f
            self.counts[stream_id] = 0
            log.info("file_sink: writing stream %r to %s", stream_id, path)
        return f

    def _write_obj(self, stream_id: str, obj: dict) -> None:
        f = self._file(stream_id)
        if self.options.format == "msgpack":
            f.write(self._packer.pack(obj))
        else:
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def write(self, frame: Frame) -> None:
        json_arrays = self.options.format == "jsonl"
        self._write_obj(frame.stream_id, frame_obj(frame, json_arrays=json_arrays))
        self.counts[frame.stream_id] += 1

    def end_of_stream(self, stream_id: str) -> None:
        self._write_obj(stream_id, eos_obj(stream_id, self.counts.get(stream_id, 0)))
        self.files.pop(stream_id).close()

    def close(self) -> None:
        for stream_id, f in list(self.files.items()):
            try:
                f.close()  # a stream without end-of-stream (abort): what was written is still readable
            except OSError:
                log.exception("file_sink: closing %s failed", self.path_for(stream_id))
        self.files.clear()
