"""layers/stack.layer_unroll: scan_layers True / False / "auto" (and the strings a command
line gives a field whose default is "auto")."""
import jax
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.layers.stack import layer_unroll, scans


def test_explicit_choices():
    assert layer_unroll(True, 12) == 1 and layer_unroll("true", 12) == 1
    assert layer_unroll(False, 12) == 12 and layer_unroll("False", 12) == 12
    assert scans("auto") is None and scans("TRUE") is True and scans(False) is False


def test_auto_unrolls_on_a_cpu_only(monkeypatch):
    assert layer_unroll("auto", 6) == (6 if jax.default_backend() == "cpu" else 1)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert layer_unroll("auto", 6) == 1


def test_bad_value_names_the_choices():
    with pytest.raises(ConfigError, match="true, false or auto"):
        layer_unroll("sometimes", 4)
