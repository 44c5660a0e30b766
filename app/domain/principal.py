"""Who is calling: the account an API key belongs to (resolved once per request)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str
    plan: str  # "free" | "pro"
    key_id: str
