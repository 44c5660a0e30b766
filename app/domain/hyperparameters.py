"""Hyperparameter defaults shared by job creation and the estimate endpoint.

`n_epochs="auto"` follows OpenAI's published rule: 3 epochs, more for tiny files so that the
model sees at least ~100 examples (at most 25 epochs), fewer for huge files so that a run is
at most ~25k example-passes (at least 1 epoch)."""

from __future__ import annotations

DEFAULT_EPOCHS = 3
MIN_EXAMPLE_PASSES = 100
MAX_EXAMPLE_PASSES = 25_000
MIN_AUTO_EPOCHS = 1
MAX_AUTO_EPOCHS = 25
MAX_EPOCHS = 50  # the most a caller may ask for explicitly


def auto_epochs(example_count: int) -> int:
    """The epoch count "auto" means for a training file of `example_count` examples."""
    if example_count <= 0:
        return DEFAULT_EPOCHS
    passes = example_count * DEFAULT_EPOCHS
    if passes < MIN_EXAMPLE_PASSES:
        return min(MAX_AUTO_EPOCHS, -(-MIN_EXAMPLE_PASSES // example_count))
    if passes > MAX_EXAMPLE_PASSES:
        return max(MIN_AUTO_EPOCHS, MAX_EXAMPLE_PASSES // example_count)
    return DEFAULT_EPOCHS


def resolve_epochs(n_epochs: int | str | None, *, example_count: int) -> int:
    """An explicit 1..MAX_EPOCHS value, or the auto rule for "auto"/None."""
    if n_epochs is None or n_epochs == "auto":
        return auto_epochs(example_count)
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, int):
        raise ValueError(f"n_epochs must be an integer or 'auto', not {n_epochs!r}")
    if not 1 <= n_epochs <= MAX_EPOCHS:
        raise ValueError(f"n_epochs must be between 1 and {MAX_EPOCHS}")
    return n_epochs


def trained_tokens(*, file_tokens: int, n_epochs: int) -> int:
    """Tokens a run trains on: the file's tokens (for the model's family) times epochs."""
    return max(0, int(file_tokens)) * n_epochs
