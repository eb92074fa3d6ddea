"""Every kernel test starts and ends with the default kernel choices (config `kernels`
section, jaxmodels/kernels/dispatch.py), whatever a test configured."""
import pytest

from jaxmodels.kernels import dispatch


@pytest.fixture(autouse=True)
def default_kernels():
    dispatch.configure(None)
    yield
    dispatch.configure(None)
