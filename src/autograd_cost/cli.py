"""Command line: `python -m autograd_cost profile --model mlp ...`."""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from collections.abc import Sequence

from autograd_cost.cost import pick_device
from autograd_cost.models import MODEL_BUILDERS, build_model, example_input
from autograd_cost.profile import format_profile, plot_profile, profile_freezing

GLIBC_M_TRIM_THRESHOLD, GLIBC_M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process, so that buffers reused every step do
    not page-fault anew (notebook 02). Process-wide, so only the CLI's own process does it."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_ok = libc.mallopt(GLIBC_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest allowed
    trim_ok = libc.mallopt(GLIBC_M_TRIM_THRESHOLD, 2**30)
    return bool(mmap_ok and trim_ok)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the profiler's command line (notebook 02)."""
    parser = argparse.ArgumentParser(
        prog="python -m autograd_cost",
        description="Measure what freezing a prefix or suffix of a model saves in backward.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    profile = commands.add_parser("profile", help="profile a course model at every freeze depth")
    profile.add_argument("--model", choices=sorted(MODEL_BUILDERS), default="mlp")
    profile.add_argument("--width", type=_positive, default=None,
                         help="hidden width (mlp), channels (cnn) or embedding dim (transformer)")
    profile.add_argument("--depth", type=_positive, default=None,
                         help="hidden layers (mlp) or blocks (transformer); the cnn ignores it")
    profile.add_argument("--batch", type=_positive, default=32)
    profile.add_argument("--mode", choices=["prefix", "suffix", "both"], default="both")
    profile.add_argument("--repeats", type=_positive, default=None,
                         help="fixed timed repeats per depth (default: adaptive)")
    profile.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    profile.add_argument(
        "--keep-freed-memory", action="store_true",
        help="glibc only: keep freed memory in the process, so the time of re-faulting fresh "
             "gradient buffers every step (a CPU cost that follows gradient bytes, not FLOPs) "
             "drops out and backward time follows FLOPs")
    profile.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    profile.add_argument("--plot", metavar="FILE.png", default=None,
                         help="save the cost-versus-depth figure")
    return parser


def run_profile(args: argparse.Namespace) -> list[dict]:
    """Build the chosen course model and profile it (notebook 02)."""
    model = build_model(args.model, width=args.width, depth=args.depth)
    device = pick_device(args.device)
    modes = ("prefix", "suffix") if args.mode == "both" else (args.mode,)
    return profile_freezing(model, example_input(model, batch=args.batch), modes=modes,
                            device=device, repeats=args.repeats)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m autograd_cost` and `autograd-cost` (notebook 02)."""
    args = build_parser().parse_args(argv)
    if args.keep_freed_memory and not keep_freed_memory():
        print("--keep-freed-memory needs glibc; measuring with the default allocator",
              file=sys.stderr)
    rows = run_profile(args)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_profile(rows))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        plot_profile(rows, path=args.plot, title=f"{args.model}, batch {args.batch}")
        print(f"saved the figure to {args.plot}", file=sys.stderr)
    return 0
