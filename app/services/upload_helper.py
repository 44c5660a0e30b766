"""A helper process that validates uploads for the API (`python -m app.services.upload_helper`).

The JSONL validator is CPU work in Python: run in the API process, on its event loop or in a
thread, it takes the process's share of the CPU (and the GIL) from every other request. In a
process of its own it is scheduled beside the API instead (measured in bench/uploads.py:
concurrent reads keep their latency). The API streams the file's bytes to it over stdin and
reads the report back from stdout; one upload at a time per helper, many uploads per helper
(the tokenizer it loaded stays loaded). It runs at a lower priority than the API, its
tokenizer on one thread. It ends when its stdin closes (the API went away).

Frames on stdin: a type byte and a 4-byte big-endian length, then that many bytes:
`S` start (JSON: max_line_bytes, model_store_dir, max_bytes), `D` file bytes, `E` end of
file (the helper answers with a 4-byte length and the report as JSON), `A` abandon."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
from pathlib import Path
from typing import BinaryIO

HEADER = struct.Struct(">cI")
LENGTH = struct.Struct(">I")
START, DATA, END, ABANDON = b"S", b"D", b"E", b"A"


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def serve(source: BinaryIO, sink: BinaryIO) -> None:
    from app.services.uploads import JsonlValidator

    validator = None
    while header := source.read(HEADER.size):
        if len(header) < HEADER.size:
            return
        kind, length = HEADER.unpack(header)
        payload = source.read(length) if length else b""
        if kind == START:
            settings = json.loads(payload)
            validator = JsonlValidator(max_line_bytes=settings["max_line_bytes"],
                                       model_store_dir=Path(settings["model_store_dir"]),
                                       max_bytes=settings["max_bytes"])
        elif kind == DATA and validator is not None:
            validator.feed(payload)
            while (busy := validator.waiting()) is not None:
                busy.result()
        elif kind == END and validator is not None:
            report = json.dumps(dataclasses.asdict(validator.finish())).encode()
            validator.close()
            validator = None
            sink.write(LENGTH.pack(len(report)) + report)
            sink.flush()
        elif kind == ABANDON and validator is not None:
            validator.close()
            validator = None


# Below the API on a busy machine: its requests first, the validation in the CPU left over.
NICENESS = 5


def main() -> None:
    if hasattr(os, "nice"):
        os.nice(NICENESS)
    sink = sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries the reports: nothing else may print there
    serve(sys.stdin.buffer, sink)


if __name__ == "__main__":
    main()
