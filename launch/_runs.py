"""Finding a trained run's workdir for launch.generate / sample / evaluate / merge_lora, and
loading a run's (or a converted folder's) model for the export commands.

A wrong --workdir is the most common first mistake (a variant's run lives in
runs/<config>_<variant>): say so in one line and name the runs that do exist, instead of a
traceback, and never create folders while looking.
"""
from __future__ import annotations

import difflib
import os


class RunNotFoundError(FileNotFoundError):
    """The workdir holds no checkpoint; the message names close runs that do."""


def has_checkpoint(workdir: str) -> bool:
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def runs_near(workdir: str) -> list[str]:
    """Sibling folders of workdir that hold a checkpoint, the closest names first."""
    parent = os.path.dirname(os.path.normpath(workdir)) or "."
    if not os.path.isdir(parent):
        return []
    found = sorted(os.path.join(parent, n) if parent != "." else n for n in os.listdir(parent)
                   if has_checkpoint(os.path.join(parent, n)))
    name = os.path.basename(os.path.normpath(workdir))
    prefixed = [r for r in found if os.path.basename(r).startswith(name) or name.startswith(os.path.basename(r))]
    close = difflib.get_close_matches(workdir, found, n=3, cutoff=0.5)
    return list(dict.fromkeys(prefixed + close + found))


def require_run(workdir: str) -> str:
    """workdir if it holds a checkpoint, else RunNotFoundError with the fix."""
    if has_checkpoint(workdir):
        return workdir
    why = "no such folder" if not os.path.isdir(workdir) else "it holds no checkpoint yet"
    near = runs_near(workdir)
    if near:
        hint = f"did you mean --workdir {near[0]}?"
        if len(near) > 1:
            hint += f" (runs with checkpoints there: {', '.join(near[:6])}{', ...' if len(near) > 6 else ''})"
    else:
        hint = "train one first: python -m launch.train --config configs/<name>.py[:variant] (it prints its workdir)"
    raise RunNotFoundError(f"no trained run in {workdir} ({why}); {hint}")


def load_model(workdir: str | None, hf: str | None) -> tuple[dict, dict]:
    """(model config dict, params) of a run's newest checkpoint (EMA params when kept), or of
    a launch.convert output / HF folder: what the export commands read."""
    if workdir:
        from jaxmodels.train.checkpoint import load_params
        cfg, params = load_params(workdir, use_ema=True)
        return cfg.model.to_dict(), params
    from jaxmodels.convert.pretrained import load_pretrained
    return load_pretrained(hf)
