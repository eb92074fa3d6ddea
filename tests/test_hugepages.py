"""jaxmodels/hugepages.py: when the glibc huge-page tunable is wanted, and the launch re-exec."""
import os
import subprocess
import sys

import pytest

from jaxmodels import hugepages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_user_and_the_off_switch_win(monkeypatch):
    monkeypatch.setattr(hugepages, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(hugepages, "_glibc_at_least", lambda *_: True)
    monkeypatch.setattr(hugepages.sys, "platform", "linux")
    assert hugepages.wanted({})
    assert hugepages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert not hugepages.wanted({"JAXMODELS_HUGEPAGES": "0"})
    assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert hugepages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})["GLIBC_TUNABLES"] == \
        "glibc.malloc.hugetlb=0"
    for mode in ("always", "never", ""):
        monkeypatch.setattr(hugepages, "_thp_mode", lambda: mode)
        assert not hugepages.wanted({})


@pytest.mark.skipif(not hugepages.wanted({}), reason="huge-page tunable not wanted on this host")
def test_a_launch_command_restarts_once_with_the_tunable():
    """A `launch.*` main module re-executes itself (same arguments) with the tunable set, once."""
    code = ("import os, runpy, sys; "
            "runpy.run_module('launch._env', run_name='__main__', alter_sys=True); "
            "print('TUNABLES', os.environ.get('GLIBC_TUNABLES'), os.environ.get('JAXMODELS_HUGEPAGES_SET'))")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXMODELS_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == ["TUNABLES glibc.malloc.hugetlb=1 1"]
