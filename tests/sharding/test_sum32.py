"""The sharded checksum (sum32) that checkpoints of arrays spread over processes record:
it changes with any one element, and verify_tree checks a checkpoint with the kind it saved."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.train import integrity


def test_sum32_changes_with_one_element_and_one_bit():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 7)), jnp.float32)
    base = integrity.array_sum32(x)
    assert base.startswith("sum32:") and base.endswith(":float32[3, 5, 7]")
    assert integrity.array_sum32(jnp.array(x)) == base
    flipped = np.asarray(x).copy()
    flipped.view(np.uint32)[2, 4, 6] ^= 1  # the lowest mantissa bit of the last element
    assert integrity.array_sum32(jnp.asarray(flipped)) != base
    swapped = np.asarray(x).copy()
    swapped[0, 0, [0, 1]] = swapped[0, 0, [1, 0]]  # same values, other places
    assert integrity.array_sum32(jnp.asarray(swapped)) != base
    for dtype in (jnp.bfloat16, jnp.int8, jnp.bool_, jnp.uint32):
        assert integrity.array_sum32(jnp.zeros((4,), dtype)).endswith(f"{np.dtype(dtype)}[4]")


def test_verify_tree_recomputes_the_kind_each_leaf_was_saved_with():
    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((4,), jnp.int32)}
    saved = {"a": integrity.array_sum32(tree["a"]), "b": integrity.array_crc(tree["b"])}
    integrity.verify_tree(tree, saved, "checkpoint 1")
    with pytest.raises(integrity.ChecksumMismatchError, match="a"):
        integrity.verify_tree({**tree, "a": tree["a"].at[1, 2].set(0.0)}, saved, "checkpoint 1")
