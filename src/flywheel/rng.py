"""Randomness derived from names, so a re-run (or a re-sharded run) draws the same numbers."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from e.g. ``(base_seed, round, prompt_id, sample_idx)``; stable across processes."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
