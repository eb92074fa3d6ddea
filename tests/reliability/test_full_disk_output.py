"""A save that fails in Orbax's background threads (a full disk) ends `launch.train` with
exactly one `error: saving checkpoint ...` line on stderr: no Orbax tracebacks before it,
nothing from the abandoned save's threads after it. Those go to the details file it names.

The default test makes the background write itself fail with ENOSPC, and (as a DiT run on
a full tmpfs once did, printing `RuntimeError: Event loop is closed` at exit) leaves a
thread of the failed save that prints a traceback after the error. The slow one fills a
real tmpfs (root only)."""
import os
import re
import subprocess
import sys

import pytest

from tests.reliability.disk import small_disk
from tests.train.util import ROOT, TOY_CONFIG

# Runs launch.train as a program, with Orbax's background array write failing from the
# second save on (the first one lands), like a disk that fills up.
BACKGROUND_ENOSPC = """
import errno, runpy, sys, threading, time
from orbax.checkpoint._src.serialization import serialization
write = serialization.async_serialize_from_host
calls, allowed = [], int(sys.argv.pop(1))

async def full(*a, **k):
    calls.append(1)
    if len(calls) > allowed:
        def late():  # a thread of the failed save still running at interpreter exit
            time.sleep(1.0)
            raise RuntimeError("Event loop is closed")
        threading.Thread(target=late, name="late_save_thread").start()
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")
    return await write(*a, **k)
serialization.async_serialize_from_host = full
sys.argv[0] = "launch.train"
runpy.run_module("launch.train", run_name="__main__")
"""

ARGS = ["--config", TOY_CONFIG, "--config.train.steps=30", "--config.train.checkpoint_every=10",
        "--config.train.eval_every=0"]


def _env():
    return {**os.environ, "PYTHONPATH": ROOT}


def _one_error_line(proc: subprocess.CompletedProcess, failed_step: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(lines) == 1, f"{len(lines)} stderr lines:\n" + "\n".join(lines[:40] + ["..."] + lines[-10:])
    line = lines[0]
    assert re.match(rf"error: saving checkpoint {failed_step} in .* failed .*Free disk space", line), line
    return line


def test_a_failed_background_save_prints_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    # every state save writes several arrays: let the first save's (some dozen) through
    proc = subprocess.run([sys.executable, "-c", BACKGROUND_ENOSPC, "40", *ARGS, "--workdir", workdir],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    line = _one_error_line(proc, r"\d+")
    details = re.search(r"\(details: (.*)\)$", line).group(1)
    with open(details) as f:
        text = f.read()
    os.remove(details)
    # Orbax's tracebacks and the late thread's output are kept there, not lost
    assert "No space left on device (simulated)" in text and "Traceback" in text
    assert "Event loop is closed" in text
    assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_a_full_tmpfs_prints_one_line(tmp_path, attempt):
    """The real thing: the workdir on a tmpfs that fills during the second save."""
    with small_disk(str(tmp_path / "disk"), 150) as real:
        if not real:
            pytest.skip("mounting a tmpfs needs root")
        workdir = str(tmp_path / "disk" / "run")
        proc = subprocess.run([sys.executable, "-m", "launch.train", *ARGS, "--workdir", workdir,
                               "--config.model.width=128"],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        line = _one_error_line(proc, r"\d+")
        details = re.search(r"\(details: (.*)\)$", line)
        if details:
            os.remove(details.group(1))
        assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]


class _FailedSaveManager:
    """Stands in for Orbax's CheckpointManager after a background save failed: waiting raises
    the error, and so does close(), once more (as Orbax does, depending on timing)."""

    def wait_until_finished(self):
        raise OSError(28, "No space left on device")

    def close(self):
        raise OSError(28, "No space left on device")


def test_close_after_a_failed_save_raises_the_one_line_error(tmp_path):
    from jaxmodels.train.checkpoint import CheckpointSaveError, Checkpointer
    ckpt = Checkpointer(str(tmp_path / "run"), writer=True)
    ckpt.manager.close()
    ckpt.manager, ckpt._saving = _FailedSaveManager(), 40
    with pytest.raises(CheckpointSaveError, match="saving checkpoint 40 in .* failed .*Free disk space") as first:
        ckpt.wait()
    with pytest.raises(CheckpointSaveError) as again:  # not Orbax's bare OSError
        ckpt.close()
    assert again.value is first.value
    if first.value.details:
        os.remove(first.value.details)
