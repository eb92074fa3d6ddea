"""Convert pytorch-fid's Inception weights (.pth, a PyTorch pickle) to safetensors, once.

    python -m launch.convert_fid_inception --pth pt_inception-2015-12-05-6726825d.pth --out fid_inception.safetensors

Needs torch for this one step; `launch.evaluate --fid --inception fid_inception.safetensors`
then reads the result without torch. The .pth is pytorch-fid's release file (download it
where there is network; jaxmodels never downloads).
"""
import argparse
import sys

from jaxmodels.config import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pth", required=True, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--out", required=True, help="output .safetensors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from jaxmodels.convert.inception import convert_pth, load_fid_inception
    try:
        count = convert_pth(args.pth, args.out)
        load_fid_inception(args.out)   # checks every tensor the network needs is there
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({count} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
