"""The "auto" rules for hyperparameters (app/domain/job_settings.py applies them at creation).

`n_epochs="auto"` follows OpenAI's published rule: 3 epochs, more for tiny files so that the
model sees at least ~100 examples (at most 25 epochs), fewer for huge files so that a run is
at most ~25k example-passes (at least 1 epoch). The batch size grows with the file (about
0.2% of the examples, 1..32) like OpenAI's. With a validation file, "auto" evaluates it
DEFAULT_N_EVALS times, evenly spaced (the last at the end); "auto" checkpoints once per epoch
(at most MAX_AUTO_CHECKPOINTS), as OpenAI keeps a checkpoint per epoch."""

from __future__ import annotations

DEFAULT_EPOCHS = 3
MIN_EXAMPLE_PASSES = 100
MAX_EXAMPLE_PASSES = 25_000
MIN_AUTO_EPOCHS = 1
MAX_AUTO_EPOCHS = 25
MAX_EPOCHS = 50  # the most a caller may ask for explicitly (the request schema's bound)
MAX_AUTO_BATCH = 32
DEFAULT_N_EVALS = 10
MAX_AUTO_CHECKPOINTS = 20  # crma_core.limits' bound on n_checkpoints


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


def auto_batch_size(example_count: int) -> int:
    return max(1, min(MAX_AUTO_BATCH, example_count // 500))


def auto_n_evals(*, has_validation: bool) -> int:
    return DEFAULT_N_EVALS if has_validation else 0


def auto_n_checkpoints(n_epochs: int) -> int:
    return max(1, min(MAX_AUTO_CHECKPOINTS, n_epochs))
