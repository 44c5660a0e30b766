"""Make the repository root importable (`bench.data`) when pytest is started as `pytest`
rather than `python -m pytest` from the root."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
