"""Detached tasks (app/api/detached.py): kept until done, waited for at shutdown within a
limit, and what outlives the limit is reported."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.api.detached import DetachedTasks


def test_drain_waits_for_what_is_running_and_reports_what_is_left(
        caplog: pytest.LogCaptureFixture) -> None:
    finished: list[str] = []

    async def work(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        finished.append(name)

    async def scenario() -> tuple[int, int]:
        tasks = DetachedTasks()
        tasks.spawn(work("quick", 0.05))
        tasks.spawn(work("slow", 5))
        assert len(tasks) == 2
        await tasks.drain(timeout_s=1.0)
        left = len(tasks)
        await asyncio.sleep(0)
        return left, len(tasks)

    with caplog.at_level(logging.WARNING, logger="app.api.detached"):
        left, _ = asyncio.run(scenario())
    assert finished == ["quick"] and left == 1
    assert "1 detached task(s) still running at shutdown" in caplog.text
