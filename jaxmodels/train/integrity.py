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


SUM_KIND = "sum32:"


def array_sum32(x) -> str:
    """A position-weighted uint32 sum of the array's bits, computed where the shards live
    (nothing gathered) and the same on every mesh and process count: integer sums do not
    depend on the order they are added in. For arrays spread over several processes, whose
    bytes no single host holds."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    def fold(a):
        if a.dtype == jnp.bool_:
            a = a.astype(jnp.uint8)
        width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[a.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(a, width).astype(jnp.uint32)
        index = jnp.zeros(bits.shape, jnp.uint32)
        for d in range(bits.ndim):  # the flat (row-major) position of every element
            index = index * jnp.uint32(bits.shape[d]) + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, d)
        weight = index * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)
        return jnp.sum(bits * (weight | jnp.uint32(1)), dtype=jnp.uint32)

    sharding = getattr(x, "sharding", None)
    out = NamedSharding(sharding.mesh, PartitionSpec()) if isinstance(sharding, NamedSharding) else None
    value = int(np.asarray(jax.jit(fold, out_shardings=out)(x)))
    return f"{SUM_KIND}{value:08x}:{np.dtype(x.dtype)}{list(x.shape)}"


def array_checksum(x, kind: Optional[str] = None) -> str:
    """CRC32 of the bytes when this process can read the whole array (or kind says crc),
    else (or when the saved checksum was one) the sharded sum32."""
    spread = isinstance(x, jax.Array) and not x.is_fully_addressable
    if kind == SUM_KIND or (kind is None and spread):
        return array_sum32(x)
    return array_crc(x)


def tree_checksums(tree: PyTree, kinds: Optional[dict] = None) -> dict:
    """{"path/to/leaf": "crc32:dtype[shape]"} for every array leaf (None leaves skipped);
    kinds: {"path": SUM_KIND or other} to compute the kind a checkpoint recorded."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for p, x in flat:
        key = jax.tree_util.keystr(p, simple=True, separator="/")
        out[key] = array_checksum(x, None if kinds is None else kinds.get(key))
    return out


def verify_tree(tree: PyTree, expected: Optional[dict], what: str) -> None:
    if expected is None:
        return  # a checkpoint written before checksums existed: nothing to compare
    kinds = {k: (SUM_KIND if str(v).startswith(SUM_KIND) else "crc") for k, v in expected.items()}
    got = tree_checksums(tree, kinds)
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
