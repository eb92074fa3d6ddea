"""Will a config fit? Compiles its train step on abstract shapes (nothing allocated) and
prints params / optimizer / activations against memory.budget_gb.

    python -m launch.memory --config configs/gpt2_124m.py[:variant] [--config.train.micro_batches=4 ...]
    python -m launch.memory --config configs/mamba_130m.py --fit

On a mesh every number is per device. To size a mesh without its devices, --devices N
compiles for N fake CPU devices, e.g. LLaMA-7B with FSDP over 8:
    python -m launch.memory --config configs/llama2_7b_qlora.py --devices 8 --config.mesh.data=1 \
        --config.mesh.fsdp=8 --config.model.lora_rank=0 --config.model.quant=none

--fit searches micro-batches, remat policy, optimizer-state format and scan chunk for the
fastest plan that fits (jaxmodels/train/autofit.py) and prints it as flags to add; training
with --config.memory.auto_fit=True runs that plan by itself.
On a host without a GPU the estimate is of what a GPU would run: XLA:CPU's while-loop
invariant code motion is off (below), kernels.cross_entropy=auto counts as the chunked
form a GPU picks (as_on_a_gpu), not the full logits a CPU run uses, and kernels.attention=auto,
kernels.matmul=auto and kernels.norm=auto as XLA's attention, dot and norm, not the C++
kernels a CPU run uses.
Exit status 0 when it fits (--fit: a plan was found), 1 when it does not, 2 for a config error.
"""
import os
import sys


def take_devices(argv: list[str]) -> tuple[int, list[str]]:
    """(N of --devices N or --devices=N, 0 without it; argv without that flag)."""
    out, n, i = [], 0, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--devices" and i + 1 < len(argv):
            n, i = int(argv[i + 1]), i + 2
            continue
        if arg.startswith("--devices="):
            n = int(arg.split("=", 1)[1])
        else:
            out.append(arg)
        i += 1
    return n, out


if __name__ == "__main__":  # fake devices must be asked for before jax is imported
    _n, _ = take_devices(sys.argv[1:])
    if _n > 1:
        _flag = f"--xla_force_host_platform_device_count={_n}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

# XLA:CPU upcasts a bf16 weight to f32 for most ops that read it, and its loop-invariant
# code motion then hoists that upcast of the whole stacked [n_layers, ...] weight out of the
# layer scan, so a CPU compile of a bf16-stored (frozen) base counts an f32 copy of the
# entire model that a GPU, whose matmuls read bf16, never makes. Off for this estimate
# (a CPU host with no GPU), before jax starts; docs/adapters.md has the measurement.
CPU_HOST = not os.path.exists("/dev/nvidia0") and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu"
if CPU_HOST:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_disable_hlo_passes=while-loop-invariant-code-motion").strip()

from launch import _env  # noqa: F401,E402  (must come before jax)

from jaxmodels.config import ConfigError  # noqa: E402


# Ops whose "auto" picks something else on a CPU host than on a GPU, and what the estimate
# counts instead (as_on_a_gpu): the XLA form a GPU runs.
_CPU_ONLY_AUTO = (
    ("cross_entropy", "is the chunked form there (xla; on this CPU host it would be dense)"),
    ("attention", "is counted as the XLA attention (on this CPU host it would be the C++ kernel)"),
    ("matmul", "is counted as XLA's dot (on an Intel CPU host it would be MKL's)"),
    ("norm", "is counted as the XLA norm (on this CPU host it would be the C++ kernel)"),
)


def as_on_a_gpu(cfg) -> str:
    """On a CPU host, estimate the kernels a GPU would run. kernels.cross_entropy="auto" is the
    full-logits form on a CPU (faster there) but the chunked one on a GPU
    (jaxmodels/kernels/dispatch.py), whose vocabulary-sized f32 buffers the CPU plan would
    otherwise count (LLaMA-3.2 1B, 128k vocabulary: 0.9 GiB). kernels.attention="auto" is the
    C++ CPU kernel on a CPU, whose buffers XLA cannot see; the einsum path ("xla") keeps the
    estimate an XLA attention on a GPU would need. kernels.matmul="auto" likewise counts as
    XLA's dot, what a GPU runs, not the MKL custom call of an Intel CPU host, and kernels.norm="auto"
    as the XLA norm, not the C++ one. Returns the note to print ("" when nothing changed)."""
    kernels = cfg.get("kernels", None)
    if not CPU_HOST or kernels is None:
        return ""
    notes = []
    model = cfg.get("model", None)
    if model is not None and str(model.get("scan_layers", "")).lower() == "auto":
        with model.ignore_type():
            model.scan_layers = True
        notes.append("model.scan_layers=auto is the layer loop there (on this CPU host it would be unrolled)")
    for op, why in _CPU_ONLY_AUTO:
        if kernels.get(op, "auto") == "auto":
            kernels[op] = "xla"
            notes.append(f"kernels.{op}=auto {why}")
    return ("note: estimated as on a GPU: " + "; ".join(notes)) if notes else ""


def main(argv=None) -> int:
    from launch.train import parse
    argv = sys.argv[1:] if argv is None else argv
    fit = "--fit" in argv
    argv = [a for a in argv if a != "--fit"]
    try:
        devices, argv = take_devices(argv)
        import jax
        if devices > jax.device_count():
            raise ConfigError(f"--devices {devices} but jax already started with {jax.device_count()}: "
                              f"pass --devices on the command line of python -m launch.memory")
        _, cfg = parse(argv, __doc__, workdir=False)
        note = as_on_a_gpu(cfg)
        if note:
            print(note)
        if fit:
            from jaxmodels.train.autofit import search
            result = search(cfg, log=lambda line: print(line, flush=True))
            print(result.summary())
            return 0 if result.plan is not None else 1
        from jaxmodels.train.memory import advice, estimate
        report = estimate(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    if not report.fits:
        print(f"does not fit; try: {advice(cfg)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
