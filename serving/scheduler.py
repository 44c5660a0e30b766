"""The engine thread: admits queued generations, groups them by adapter, and steps one group
at a time (continuous batching within a group, one merged adapter per forward pass).

Each loop iteration: run control tasks (unmerge an evicted adapter, route a prompt), drop
cancelled sequences, admit waiting ones up to ``max_batch`` (routing those that name
candidate domains), pick a group, make its adapter the active one, prefill its newcomers,
then one decode step for its rows. A group keeps the model for ``switch_every`` steps while
other groups wait, so two adapters in use at once take turns instead of one starving.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from serving.adapters import LoadedAdapter
from serving.batch import DecodeBatch, can_batch
from serving.compiled_decode import CompiledDecode
from serving.errors import EngineBusy, EngineUnavailable, EngineError
from serving.residual import CRMAResidual
from serving.routing import choose_domain
from serving.sequence import Sequence
from serving.weights import MergedWeights

log = logging.getLogger(__name__)


class Group:
    """The sequences of one adapter (None: the base model)."""

    def __init__(self, adapter: LoadedAdapter | None):
        self.adapter = adapter
        self.pending: deque[Sequence] = deque()
        self.batches: list[DecodeBatch] = []

    def size(self) -> int:
        return len(self.pending) + sum(len(b) for b in self.batches)

    def oldest(self) -> float:
        seqs = list(self.pending) + [s for b in self.batches for s in b.rows]
        return min(s.times["submitted"] for s in seqs)


class Scheduler:
    def __init__(self, *, model: Any, weights: MergedWeights, residual: CRMAResidual,
                 compiled: CompiledDecode, release: Callable[[LoadedAdapter], None],
                 num_layers: int, max_batch: int, max_waiting: int, switch_every: int,
                 batching: bool = True):
        self.model = model
        self.weights = weights
        self.residual = residual
        self.compiled = compiled
        self.release = release
        self.num_layers = num_layers
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.switch_every = switch_every
        self.batching = batching
        self.device = next(model.parameters()).device
        self._waiting: deque[Sequence] = deque()
        self._groups: dict[str | None, Group] = {}
        self._controls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._current: str | None = None
        self._slice = 0
        self._thread = threading.Thread(target=self._run, name="crma-engine", daemon=True)
        self.steps = 0
        self.peak_batch = 0  # most sequences one forward pass has decoded
        self.finished: Counter[str] = Counter()  # generations ended, by finish reason

    # -- other threads ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _refusal(self) -> EngineBusy | None:
        """Why a submit would be refused now (called under the lock), or None."""
        if self._closing:
            return EngineUnavailable("the engine is shutting down", retry_after_s=5)
        if len(self._waiting) >= self.max_waiting:
            return EngineBusy(f"{len(self._waiting)} requests are already waiting; retry "
                              "shortly", retry_after_s=self._retry_after())
        return None

    def check_room(self) -> None:
        """Raise what ``submit`` would raise now (before paying for a cold adapter)."""
        with self._cond:
            refusal = self._refusal()
        if refusal is not None:
            raise refusal

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            refusal = self._refusal()
            if refusal is None:
                self._waiting.append(seq)
                self._cond.notify_all()
        if refusal is not None:
            raise refusal

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the engine thread between two steps (the model is idle then)."""
        future: Future = Future()
        with self._cond:
            if self._closing:
                raise EngineUnavailable("the engine is shutting down", retry_after_s=5)
            self._controls.append((fn, future))
            self._cond.notify_all()
        return future

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        # _groups changes on the engine thread only; list() copies it in one step.
        sizes = [group.size() for group in list(self._groups.values())]
        with self._cond:
            waiting = len(self._waiting)
        return {"active": sum(sizes), "waiting": waiting, "max_batch": self.max_batch,
                "max_waiting": self.max_waiting, "groups": len(sizes), "steps": self.steps,
                "peak_batch": self.peak_batch, "finished": dict(self.finished),
                "kv_cache_bytes": self.kv_bytes()}

    def kv_bytes(self) -> int:
        return sum(b.nbytes() for g in list(self._groups.values()) for b in list(g.batches))


    def _retry_after(self) -> int:
        return max(1, len(self._waiting) // max(1, self.max_batch))

    # -- the engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        # Inference mode for the thread's life: no autograd bookkeeping on any tensor it makes.
        with torch.inference_mode():
            self._loop()
        self._shutdown()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or self._controls or self._waiting or self._active()):
                    self._cond.wait()
                if self._closing:
                    break
                controls = list(self._controls)
                self._controls.clear()
            for fn, future in controls:
                self._control(fn, future)
            try:
                self._drop_cancelled()
                self._admit()
                group = self._pick()
                if group is not None:
                    self._step(group)
            except Exception:  # noqa: BLE001 - the loop must survive; failures reach the streams
                log.exception("engine step failed")

    def _control(self, fn: Callable[[], Any], future: Future) -> None:
        try:
            future.set_result(fn())
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            future.set_exception(error)

    def _active(self) -> int:
        return sum(group.size() for group in self._groups.values())

    def _finish(self, seq: Sequence, reason: str | None = None,
                error: Exception | None = None) -> None:
        """Unpin the sequence's adapters, then tell its consumer (who may look at the cache)."""
        if seq.adapter is not None:
            self.release(seq.adapter)
        for _, candidate in seq.candidates or ():
            self.release(candidate)
        seq.candidates = None
        self.finished[reason or ("error" if error is not None else "stop")] += 1
        if error is not None:
            seq.fail(error)
        else:
            seq.finish(reason or "stop")

    def _drop_cancelled(self) -> None:
        with self._cond:
            cancelled = [s for s in self._waiting if s.cancelled]
            for seq in cancelled:
                self._waiting.remove(seq)
        for seq in cancelled:
            self._finish(seq, "cancelled")
        for key, group in list(self._groups.items()):
            for seq in [s for s in group.pending if s.cancelled]:
                group.pending.remove(seq)
                self._finish(seq, "cancelled")
            for batch in group.batches:
                gone = [s for s in batch.rows if s.cancelled]
                batch.remove(gone)
                for seq in gone:
                    self._finish(seq, "cancelled")
            self._tidy(key, group)

    def _tidy(self, key: str | None, group: Group) -> None:
        group.batches = [b for b in group.batches if len(b)]
        if not group.size():
            del self._groups[key]

    def _admit(self) -> None:
        while self._active() < self.max_batch:
            with self._cond:
                if not self._waiting:
                    return
                seq = self._waiting.popleft()
            if seq.candidates:
                try:
                    self._route(seq)
                except Exception as error:  # noqa: BLE001
                    self._finish(seq, error=_engine_error(error))
                    continue
            group = self._groups.get(seq.adapter_key)
            if group is None:
                group = self._groups[seq.adapter_key] = Group(seq.adapter)
            group.pending.append(seq)

    def _route(self, seq: Sequence) -> None:
        best, routing = choose_domain(self.model, self.residual, seq.prompt_ids, seq.candidates,
                                      self.weights.merged, self.num_layers)
        seq.domain, seq.adapter = seq.candidates[best]
        seq.routing = routing
        for index, (_, candidate) in enumerate(seq.candidates):
            if index != best:
                self.release(candidate)
        seq.candidates = None

    def _pick(self) -> Group | None:
        ready = [g for g in self._groups.values() if g.size()]
        if not ready:
            return None
        current = self._groups.get(self._current)
        if current is not None and current.size() and (
                self._slice < self.switch_every or len(ready) == 1):
            return current
        others = [g for g in ready if g is not current] or ready
        self._slice = 0
        return min(others, key=Group.oldest)

    def _step(self, group: Group) -> None:
        key = group.adapter.id if group.adapter is not None else None
        switch_ms = self.weights.activate(group.adapter)
        self.residual.activate(group.adapter)
        self._current = key
        while group.pending:
            seq = group.pending.popleft()
            seq.switch_ms, switch_ms = switch_ms, 0.0
            self._prefill(group, seq)
        for batch in list(group.batches):
            self._decode(batch)
        self._slice += 1
        self.steps += 1
        self._tidy(key, group)

    def _prefill(self, group: Group, seq: Sequence) -> None:
        seq.mark("prefill")
        try:
            seq.start()
            ids = torch.tensor([seq.prompt_ids], device=self.device)
            cache = DynamicCache(config=self.model.config)
            logits = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
            token = seq.sampler(logits[0, -1])
        except Exception as error:  # noqa: BLE001
            log.exception("prefill failed")
            self._finish(seq, error=_engine_error(error))
            return
        reason = seq.accept(token)
        if reason is not None:
            self._finish(seq, reason)
            return
        length = len(seq.prompt_ids)
        joinable = [b for b in group.batches if len(b) < self.max_batch]
        if self.batching and joinable and can_batch(cache) and can_batch(joinable[0].cache):
            joinable[0].add(seq, cache, length)
        else:
            group.batches.append(DecodeBatch(seq, cache, length))

    def _decode(self, batch: DecodeBatch) -> None:
        try:
            tokens = torch.tensor([[s.last_token] for s in batch.rows], device=self.device)
            self.peak_batch = max(self.peak_batch, len(batch))
            inputs = batch.step_inputs(self.device)  # none: no row is padded
            logits = None if inputs else self.compiled.decode(tokens, batch.cache)
            if logits is None:
                logits = self.model(input_ids=tokens, cache=batch.cache, use_cache=True,
                                    **inputs).logits
            logits = logits[:, -1]
            batch.advance()
            reasons = [(s, s.accept(s.sampler(logits[i]))) for i, s in enumerate(batch.rows)]
        except Exception as error:  # noqa: BLE001
            log.exception("decode step failed")
            rows = list(batch.rows)
            batch.remove(rows)
            for seq in rows:
                self._finish(seq, error=_engine_error(error))
            return
        finished = [(s, reason) for s, reason in reasons if reason is not None]
        batch.remove([s for s, _ in finished])
        for seq, reason in finished:
            self._finish(seq, reason)

    def _shutdown(self) -> None:
        closed = EngineUnavailable("the engine shut down before this generation finished")
        with self._cond:
            waiting = list(self._waiting)
            self._waiting.clear()
            controls = list(self._controls)
            self._controls.clear()
        for seq in waiting + [s for g in self._groups.values()
                              for s in list(g.pending) + [r for b in g.batches for r in b.rows]]:
            self._finish(seq, error=closed)
        self._groups.clear()
        for _, future in controls:
            future.set_exception(closed)


def _engine_error(error: Exception) -> EngineError:
    if isinstance(error, EngineError):
        return error
    return EngineError(f"generation failed: {type(error).__name__}: {error}")
