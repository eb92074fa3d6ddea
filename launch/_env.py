"""Imported first by every launch module, BEFORE jax: caps XLA's GPU allocator at the budget,
and (jaxmodels/hugepages.py) restarts a `python -m launch.X` command once with glibc's
transparent-huge-page tunable where that helps.

XLA_CLIENT_MEM_FRACTION = min(0.95, memory.budget_gb / total GPU memory) (budget from
`--config.memory.budget_gb=` on the command line, else 12), unless the user set a fraction.
The fit check reads the same cap back (jaxmodels/budget.py), so both use one number.
The deprecated XLA_PYTHON_CLIENT_MEM_FRACTION is never set: setting both raises.
"""
from __future__ import annotations

import os
import sys

# jaxmodels.budget imports no jax: the cap below must be set before jax is loaded.
from jaxmodels.budget import allocator_fraction, gpu_total_gb
from jaxmodels import hugepages

DEFAULT_BUDGET_GB = 12.0


def budget_from_argv(argv: list[str]) -> float:
    """The value of --config.memory.budget_gb=X (or "... X") in argv, else the default."""
    flag = "--config.memory.budget_gb"
    for i, arg in enumerate(argv):
        value = None
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            try:
                return float(value)
            except ValueError:
                return DEFAULT_BUDGET_GB  # launch's config parsing reports the bad value
    return DEFAULT_BUDGET_GB


def configure(argv: list[str] | None = None, environ=os.environ) -> str | None:
    """Sets XLA_CLIENT_MEM_FRACTION when a GPU exists and nothing is set; returns the value set."""
    if "XLA_CLIENT_MEM_FRACTION" in environ or "XLA_PYTHON_CLIENT_MEM_FRACTION" in environ:
        return None  # the user's choice wins (and setting both would raise)
    total = gpu_total_gb()
    if not total:
        return None
    fraction = allocator_fraction(budget_from_argv(sys.argv if argv is None else argv), total)
    environ["XLA_CLIENT_MEM_FRACTION"] = f"{fraction:.3f}"
    return environ["XLA_CLIENT_MEM_FRACTION"]


_jax_was_imported = "jax" in sys.modules
# A launch command run as `python -m launch.X` restarts itself once with glibc's huge-page
# tunable (jaxmodels/hugepages.py says why), before jax is loaded or anything ran.
_main = sys.modules.get("__main__")
if (not _jax_was_imported and getattr(getattr(_main, "__spec__", None), "name", "").startswith("launch.")):
    hugepages.reexec_if_wanted()
if configure() is not None and _jax_was_imported:
    # Only matters on a GPU: the allocator read its settings when jax was imported.
    print("launch/_env.py: jax was imported before the memory cap could be set", file=sys.stderr)
