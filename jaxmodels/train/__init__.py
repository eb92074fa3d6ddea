"""The one shared trainer.

  loop.py        train(cfg, workdir): the whole run (resume, eval, checkpoints, signals)
  step.py        the jitted train step (micro-batch scan, trainable mask) and eval step
  optim.py       AdamW, lr schedule, weight-decay and trainable masks
  state.py       TrainState and the EMA
  build.py       optimizer + (abstract) state shared by loop, memory and load_params
  checkpoint.py  Orbax checkpoints (state, data position, meta), restore_newest / load_params
  integrity.py   CRC32 checksums of saved arrays, data position and meta (damage detection)
  lock.py        one training process per workdir (an OS file lock)
  guard.py       stop on a non-finite step, outlier-skip bookkeeping, rollback
  preflight.py   checks before step 0 (eval inputs, resume step) and the guarded eval
  stopflag.py    SIGTERM/SIGINT as a polled flag
  memory.py      compile-time memory estimate against memory.budget_gb
  flops.py       peak FLOP/s tables and MFU
  metrics.py     metrics.jsonl (+ TensorBoard)
  bench.py       step timing for launch.bench
"""
