"""Checksums that make a damaged checkpoint detectable.

Orbax notices missing or unreadable files, but bytes changed in place inside a data file
(same size) can decode to other numbers without any error. So at save the meta records a
CRC32 of every saved array's bytes, of the data iterator's state and of the meta itself;
restore recomputes them and treats any difference as damage (fall back to an older
checkpoint). CRC32 of the raw bytes is exact for random damage and costs one pass over the
state on the host (the async save copies it to the host anyway).
"""
from __future__ import annotations

import json
import zlib
from typing import Any, Optional

import jax
import numpy as np

PyTree = Any
META_KEY = "meta_crc32"


class ChecksumMismatchError(ValueError):
    """A restored array, data position or meta differs from what was saved."""


def array_crc(x) -> str:
    a = np.ascontiguousarray(np.asarray(jax.device_get(x)))
    return f"{zlib.crc32(a.view(np.uint8).reshape(-1).data) & 0xFFFFFFFF:08x}:{a.dtype}{list(a.shape)}"


def tree_checksums(tree: PyTree) -> dict:
    """{"path/to/leaf": "crc32:dtype[shape]"} for every array leaf (None leaves skipped)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p, simple=True, separator="/"): array_crc(x) for p, x in flat}


def verify_tree(tree: PyTree, expected: Optional[dict], what: str) -> None:
    if expected is None:
        return  # a checkpoint written before checksums existed: nothing to compare
    got = tree_checksums(tree)
    bad = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    if bad:
        raise ChecksumMismatchError(f"{what}: checksum mismatch in {len(bad)} array(s), e.g. {bad[0]} "
                                    f"(saved {expected.get(bad[0])}, read {got.get(bad[0])})")


def json_crc(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return f"{zlib.crc32(text.encode('utf-8')) & 0xFFFFFFFF:08x}"


def seal_meta(meta: dict) -> dict:
    """meta plus a CRC of its own (JSON-normalized) content."""
    body = json.loads(json.dumps({k: v for k, v in meta.items() if k != META_KEY}, default=str))
    return {**body, META_KEY: json_crc(body)}


def verify_meta(meta: Any) -> dict:
    if not isinstance(meta, dict) or "config" not in meta:
        raise ChecksumMismatchError(f"meta is not a run's meta (keys: {sorted(meta)[:5] if isinstance(meta, dict) else type(meta).__name__})")
    if META_KEY in meta and json_crc({k: v for k, v in meta.items() if k != META_KEY}) != meta[META_KEY]:
        raise ChecksumMismatchError("meta: checksum mismatch")
    return meta
