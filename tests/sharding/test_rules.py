"""Mesh sizes and the per-leaf PartitionSpec rules (pure functions: no devices needed)."""
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from jaxmodels.config import ConfigError
from jaxmodels.train.mesh import mesh_shape
from jaxmodels.train.partition_rules import rules_for
from jaxmodels.train.sharding import spec_for


def _mesh(**sizes):
    return ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, **sizes})


def test_mesh_shape_fills_the_free_axis_and_names_bad_sizes():
    assert mesh_shape(_mesh(data=-1), 8) == (8, 1, 1)
    assert mesh_shape(_mesh(data=2, fsdp=-1), 8) == (2, 4, 1)
    assert mesh_shape(_mesh(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    assert mesh_shape(_mesh(data=2), 8) == (2, 1, 1)  # a fixed mesh may use fewer devices
    with pytest.raises(ConfigError, match="at most one may be -1"):
        mesh_shape(_mesh(data=-1, fsdp=-1), 8)
    with pytest.raises(ConfigError, match="do not split into groups of 3"):
        mesh_shape(_mesh(data=-1, fsdp=3), 8)
    with pytest.raises(ConfigError, match="needs 16 devices but 8 exist"):
        mesh_shape(_mesh(data=4, fsdp=4), 8)


def test_tensor_splits_heads_and_mlp_fsdp_the_embed_dim():
    gpt = rules_for("gpt")
    # scanned [n_layers, D, 3D] fused qkv: heads on tensor, the embed dim on fsdp
    assert spec_for("params/h/attn/c_attn/kernel", (12, 768, 2304), gpt, 2, 4, 1024) == P(None, "fsdp", "tensor")
    assert spec_for("params/h/attn/c_proj/kernel", (12, 768, 768), gpt, 2, 4, 1024) == P(None, "tensor", "fsdp")
    assert spec_for("params/h/mlp/proj/kernel", (12, 3072, 768), gpt, 2, 1, 1024) == P(None, "tensor", None)
    # the optimizer's copy of a param (path ends the same) gets the same spec
    assert spec_for("opt_state/1/mu/h/attn/c_attn/kernel", (12, 768, 2304), gpt, 2, 4, 1024) == \
        P(None, "fsdp", "tensor")
    # small leaves stay replicated; a dim that does not divide is not split
    assert spec_for("params/ln_f/scale", (768,), gpt, 2, 4, 1024) == P(None)
    assert spec_for("params/h/ln_1/scale", (12, 768), gpt, 2, 4, 1024) == P(None, "fsdp")
    assert spec_for("params/wte", (50257, 768), gpt, 2, 4, 1024) == P(None, "fsdp")


def test_fsdp_without_rules_takes_the_largest_divisible_dim():
    assert spec_for("params/layers/mixer/in_proj/kernel", (24, 768, 3072), [], 2, 4, 1024) == P(None, None, "fsdp")
    assert spec_for("params/layers/mixer/x_proj/kernel", (24, 1536, 80), [], 1, 8, 1024) == P(None, "fsdp", None)
    assert spec_for("params/layers/mixer/A_log", (24, 1536, 16), [], 1, 8, 10 ** 9) == P(None, None, None)
    assert spec_for("step", (), [], 2, 4, 0) == P()
