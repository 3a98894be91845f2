"""What names a window, and what seeds it: both functions of its content alone.

A window's key is a hash of its request (prompt and answer limits) under the store's
generation; its seed at an attempt is a hash of (run seed, key, attempt). So the same
window samples the same answers in any signal, any store, after any resume.
"""

from __future__ import annotations

import hashlib

_SEED_MASK = (1 << 62) - 1


def window_key(generation: str, prompt: str, max_digits: int, max_tokens: int) -> bytes:
    """16 bytes naming a request under a generation: equal requests, equal keys."""
    h = hashlib.blake2b(digest_size=16)
    h.update(generation.encode())
    h.update(b"\0")
    h.update(prompt.encode())
    h.update(f"\0{max_digits}\0{max_tokens}".encode())
    return h.digest()


def window_seed(run_seed: int, key: bytes, attempt: int) -> int:
    """The seed of the window with ``key`` at ``attempt``.

    vLLM samples k of a request with seed + k; 62-bit seeds drawn from a hash make two
    windows' sample seeds meet with negligible probability, and leave room for + k.
    """
    digest = hashlib.blake2b(f"{run_seed}:{attempt}:".encode() + key, digest_size=8).digest()
    return int.from_bytes(digest, "little") & _SEED_MASK
