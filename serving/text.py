"""Generated token ids to text: deltas that are valid UTF-8 at every chunk, cut at stop
sequences, and never holding part of a stop sequence that may still complete."""

from __future__ import annotations

from typing import Any


class _FullDecode:
    """Fallback for tokenizers without a Rust backend: re-decode and diff, holding back a
    trailing replacement character (an incomplete UTF-8 sequence)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.done = ""

    def step(self, token_id: int) -> str | None:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or len(text) <= len(self.done):
            return None
        delta, self.done = text[len(self.done):], text
        return delta


class _StreamDecode:
    """tokenizers' DecodeStream: incremental, emits only complete UTF-8 characters."""

    def __init__(self, backend: Any):
        from tokenizers.decoders import DecodeStream

        self.backend = backend
        self.stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str | None:
        return self.stream.step(self.backend, token_id)


class TextStream:
    """Feed generated token ids with ``push``; each call returns the text now safe to send."""

    def __init__(self, tokenizer: Any, stops: list[str]):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._decoder = _StreamDecode(backend) if backend is not None else _FullDecode(tokenizer)
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self._ids.append(token_id)
        chunk = self._decoder.step(token_id)
        if chunk:
            self.text += chunk
        return self._release()

    def close(self) -> str:
        """The generation has ended: everything not yet sent, including bytes of a character
        the last tokens left incomplete (as U+FFFD, as a whole decode would show them)."""
        if not self.stopped:
            whole = self._tokenizer.decode(self._ids, skip_special_tokens=True)
            if whole.startswith(self.text):
                self.text = whole
        return self.flush()

    def flush(self) -> str:
        """Everything decoded and not yet sent."""
        delta = self.text[self.sent:]
        self.sent = len(self.text)
        return delta

    def _release(self) -> str:
        if not self.stops:
            return self.flush()
        longest = max(len(s) for s in self.stops)
        start = max(0, self.sent - longest + 1)
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            self.text = self.text[:min(found)]
            self.stopped = True
            return self.flush()
        held = 0
        for stop in self.stops:  # the longest tail that could still grow into a stop sequence
            for k in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:k]):
                    held = k
                    break
        boundary = max(self.sent, len(self.text) - held)
        delta = self.text[self.sent:boundary]
        self.sent = boundary
        return delta
