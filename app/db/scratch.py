"""Throwaway PostgreSQL databases: tests and benchmarks create one per run on a server they
reach through an admin URL (a maintenance database such as `postgres`) and drop it after."""

from __future__ import annotations

import secrets


def create_scratch_database(admin_url: str, *, prefix: str) -> str:
    """Create an empty database named `<prefix><random hex>`; returns its URL."""
    import psycopg

    name = prefix + secrets.token_hex(6)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_scratch_database(admin_url: str, url: str) -> None:
    """Drop the database `url` names, closing its remaining connections."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
