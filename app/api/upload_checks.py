"""Where an upload's bytes are validated while they arrive: in helper processes beside the API
(app/services/upload_helper.py), or, for a body known to be small, on the event loop.

In a helper the validation's CPU is scheduled apart from the API's event loop: other requests
keep their latency during a big upload (bench/uploads.py: with the validation on the loop,
even in 16 KiB slices, reads' p99 tripled on a busy 2-core machine). A helper is started on
the first big upload and kept for the next (its tokenizer stays loaded); at most HELPERS run
at once per API process, a further big upload waits for one. A small body skips the process
hop: validated on the loop in slices, which costs its few milliseconds there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

from starlette.concurrency import run_in_threadpool

from app.domain.errors import ServiceUnavailable
from app.services.upload_helper import ABANDON, DATA, END, LENGTH, START, frame
from app.services.uploads import JsonlValidator, ValidationReport

HELPERS = 2
IN_PROCESS_MAX_BYTES = 1024 * 1024  # a declared body up to this is validated on the loop
SLICE_BYTES = 16 * 1024


class Check(Protocol):
    async def feed(self, data: bytes) -> None: ...

    async def finish(self) -> ValidationReport: ...


class OnTheLoop:
    """The validator on the event loop, a slice at a time with a yield between slices."""

    def __init__(self, validator: JsonlValidator) -> None:
        self.validator = validator

    async def feed(self, data: bytes) -> None:
        for start in range(0, len(data), SLICE_BYTES):
            self.validator.feed(data[start:start + SLICE_BYTES])
            while (busy := self.validator.waiting()) is not None:
                await asyncio.wrap_future(busy)
            await asyncio.sleep(0)

    async def finish(self) -> ValidationReport:
        for pending in self.validator.end():
            await asyncio.wrap_future(pending)
        return self.validator.finish()


class InHelper:
    """One upload streamed to a helper process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.finished = False

    async def feed(self, data: bytes) -> None:
        await self._send(frame(DATA, data))

    async def finish(self) -> ValidationReport:
        await self._send(frame(END))
        try:
            size = LENGTH.unpack(await self.process.stdout.readexactly(LENGTH.size))[0]
            report = json.loads(await self.process.stdout.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise _helper_lost() from error
        self.finished = True
        return ValidationReport(**report)

    async def _send(self, data: bytes) -> None:
        if self.process.stdin.is_closing():
            raise _helper_lost()
        try:
            self.process.stdin.write(data)
            await self.process.stdin.drain()  # flow control: the helper sets the pace
        except (ConnectionError, RuntimeError) as error:  # uvloop: RuntimeError once closed
            raise _helper_lost() from error


class UploadChecks:
    """The helper processes of one API process (app.state.upload_checks)."""

    def __init__(self, helpers: int = HELPERS) -> None:
        self._idle: list[asyncio.subprocess.Process] = []
        self._slots = asyncio.Semaphore(helpers)

    @asynccontextmanager
    async def check(self, *, declared_bytes: int | None, max_line_bytes: int,
                    model_store_dir: Path, max_bytes: int) -> AsyncIterator[Check]:
        settings = {"max_line_bytes": max_line_bytes, "model_store_dir": str(model_store_dir),
                    "max_bytes": max_bytes}
        if declared_bytes is not None and declared_bytes <= IN_PROCESS_MAX_BYTES:
            # In a thread: the first one in a process loads the tokenizer (~1 s).
            validator = await run_in_threadpool(
                JsonlValidator, max_line_bytes=max_line_bytes,
                model_store_dir=model_store_dir, max_bytes=max_bytes)
            try:
                yield OnTheLoop(validator)
            finally:
                validator.close()
            return
        async with self._slots:
            process = self._idle.pop() if self._idle else await _start_helper()
            check = InHelper(process)
            try:
                await check._send(frame(START, json.dumps(settings).encode()))
                yield check
            finally:
                await self._release(check)

    async def _release(self, check: InHelper) -> None:
        process = check.process
        if not check.finished:
            try:  # the upload was abandoned (a 413, a client gone): the helper forgets it
                await check._send(frame(ABANDON))
            except ServiceUnavailable:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                return
        if process.returncode is None and not process.stdin.is_closing():
            self._idle.append(process)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for process in idle:
            process.stdin.close()
        for process in idle:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()


async def _start_helper() -> asyncio.subprocess.Process:
    # One tokenizer thread: its Rust pool would otherwise take every core from the API.
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.services.upload_helper",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)


def _helper_lost() -> ServiceUnavailable:
    return ServiceUnavailable("The upload could not be validated (its helper process "
                              "stopped); retry.", code="validation_unavailable",
                              retry_after_s=1)
