"""Train (or resume) an experiment.

    python -m launch.train --config configs/gpt_shakespeare_char.py[:smoke] [--workdir DIR] \
        [--config.train.steps=200 ...] [--config.mesh.data=2 --config.mesh.fsdp=4 ...]

Many processes (hosts): under SLURM (srun, more than one task) each process joins by itself;
elsewhere start one per host with --coordinator=HOST:PORT --num_processes=N --process_id=I.

Re-running the same command resumes from the newest good checkpoint in the workdir
(default runs/<config name>[_<variant>]).
"""
from jaxmodels.train.stopflag import StopFlag  # standard library only: catch Ctrl-C from here on

# Run as a program: train() takes over a signal caught while importing (launch.memory imports
# this module for its argument parsing and keeps the default Ctrl-C).
_EARLY_STOP = StopFlag().install() if __name__ == "__main__" else None

from launch import _env  # noqa: F401,E402  (must come before jax)

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

from jaxmodels.config import ConfigError, load_config  # noqa: E402


def parse(argv: list[str], description: str, workdir: bool = True):
    """argparse for --config/--workdir; unknown `--config.a.b=v` args become overrides."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="configs/<name>.py[:variant]")
    if workdir:
        parser.add_argument("--workdir", default="", help="run directory (default: train.workdir or runs/<name>)")
        parser.add_argument("--coordinator", default="", help="multi-process run: HOST:PORT of process 0")
        parser.add_argument("--num_processes", type=int, default=0, help="multi-process run: how many processes")
        parser.add_argument("--process_id", type=int, default=-1, help="multi-process run: this process, 0..N-1")
    args, rest = parser.parse_known_args(argv)
    overrides, i = [], 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument {item!r} (overrides look like --config.train.steps=100)")
        item = item[len("--config."):]
        if "=" not in item and i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            item, i = f"{item}={rest[i + 1]}", i + 1
        overrides.append(item)
        i += 1
    cfg = load_config(args.config, overrides)
    return args, cfg


def default_workdir(spec: str) -> str:
    path, _, variant = spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}_{variant}" if variant else name)


def remove_if_empty(path: str) -> bool:
    """Deletes `path` when it holds no file but the released run lock (only empty folders);
    returns whether it did."""
    from jaxmodels.train.lock import LOCK_NAME

    if not os.path.isdir(path):
        return False
    for folder, _, files in os.walk(path):
        if [f for f in files if not (folder == path and f == LOCK_NAME)]:
            return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    workdir = None
    try:
        args, cfg = parse(argv, __doc__)
        from jaxmodels.train.distributed import initialize
        if not initialize(args.coordinator, args.num_processes, args.process_id):  # before any device is touched
            from jaxmodels.train.cpu_devices import configure
            configure(cfg)  # on a CPU: one device per core (train/cpu_devices.py)
        workdir = args.workdir or cfg.train.get("workdir", "") or default_workdir(args.config)
        created = not os.path.exists(workdir)
        from jaxmodels.train.loop import train
        try:
            train(cfg, workdir)
        except BaseException:
            if created:
                remove_if_empty(workdir)  # a command that failed before saving leaves no empty runs/ folder
            raise
    except ConfigError as e:  # also data errors (DataNotFoundError, DataError), lock, mismatch
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # TrainingDivergedError
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # CheckpointSaveError (full disk), unreadable files
        print(f"error: {e}", file=sys.stderr)
        from jaxmodels.train.checkpoint import CheckpointSaveError
        if isinstance(e, CheckpointSaveError) and __name__ == "__main__":
            # The failed save's threads may still print while the process exits: that goes
            # with the details, so the error stays the last line (a program only: a caller's
            # stderr is left alone).
            from jaxmodels.train.save_log import redirect_stderr_to
            redirect_stderr_to(e.details)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the trainer caught signals
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
