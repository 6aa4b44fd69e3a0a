"""Command line: `python -m autograd_cost profile|units --model SPEC ...` (README)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict

import pandas as pd
from torch import nn

from autograd_cost.core import ModelInput, on_device, pick_device, to_device
from autograd_cost.freezing import FreezeSummary, execution_order, freeze_summary
from autograd_cost.loading import (
    INPUT_DTYPES,
    SpecError,
    load_input,
    load_model,
    make_input,
    parse_kwargs,
    parse_shape,
)
from autograd_cost.models import MODEL_BUILDERS, build_model, example_input
from autograd_cost.profile import plot_profile, profile_freezing, profile_table
from autograd_cost.timing import keep_freed_memory


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, its arguments and the example input: shared by `profile` and `units`."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", default="mlp", metavar="SPEC",
        help=f"a course model ({', '.join(sorted(MODEL_BUILDERS))}), or your own: "
             "package.module:callable or path/to/file.py:callable (a class or factory)")
    model.add_argument("--model-kwargs", metavar="JSON", default=None,
                       help="keyword arguments for your callable, e.g. '{\"width\": 128}'")
    model.add_argument("--width", type=_positive, default=None,
                       help="course models: hidden width (mlp), channels (cnn) or dim "
                            "(transformer)")
    model.add_argument("--depth", type=_positive, default=None,
                       help="course models: hidden layers (mlp) or blocks (transformer)")
    given = parser.add_argument_group("example input (required for your own model)")
    given.add_argument("--input-shape", metavar="N,C,H,W", default=None,
                       help="a seeded random input of this shape, e.g. 16,3,224,224")
    given.add_argument("--input-dtype", choices=sorted(INPUT_DTYPES), default="float32")
    given.add_argument("--vocab", type=_positive, default=None,
                       help="token ids are drawn below this (with --input-dtype long)")
    given.add_argument("--input", metavar="SPEC", default=None,
                       help="module:callable or file.py:callable returning the example input "
                            "(a tensor or a tuple of tensors)")
    given.add_argument("--batch", type=_positive, default=32,
                       help="batch size of a course model's built-in example input")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: $AUTOGRAD_COST_DEVICE, else cuda "
                             "if present)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the profiler's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m autograd_cost",
        description="Measure what freezing layers of a model saves in backward.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    profile = commands.add_parser(
        "profile", help="profile every prefix/suffix freeze depth, or one chosen set")
    _add_model_options(profile)
    profile.add_argument("--mode", choices=["prefix", "suffix", "both"], default="both")
    profile.add_argument("--freeze", metavar="UNIT[,UNIT...]", default=None,
                         help="profile exactly these units frozen (the rest trainable) "
                              "against the unfrozen model, instead of a depth sweep")
    profile.add_argument("--as-is", action="store_true",
                         help="also profile the model as your code configured it, its "
                              "requires_grad untouched (e.g. a PEFT/LoRA model)")
    profile.add_argument("--repeats", type=_positive, default=None,
                         help="fixed timed repeats per depth (default: adaptive)")
    profile.add_argument(
        "--keep-freed-memory", action="store_true",
        help="glibc only: keep freed memory in the process, so the time of re-faulting fresh "
             "gradient buffers every step (a CPU cost that follows gradient bytes, not FLOPs) "
             "drops out and backward time follows FLOPs")
    profile.add_argument(
        "--memory", nargs="?", const="adam", default=None, metavar="OPTIMIZER",
        choices=["sgd", "sgd-momentum", "adam", "adamw"],
        help="also measure one training step's peak, gradient and optimizer-state bytes per "
             "row, with this optimizer (default when given without a name: adam)")
    profile.add_argument(
        "--predict", action="store_true",
        help="also predict each row's backward time with the per-op cost model (compute, "
             "memory traffic and per-op overhead, calibrated on this machine)")
    profile.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    profile.add_argument("--plot", metavar="FILE.png", default=None,
                         help="save the cost figure")
    bench = commands.add_parser(
        "bench", help="benchmark the per-op cost model's predictions on this machine")
    bench.add_argument("--threads", type=_positive, default=1,
                       help="intra-op threads while measuring (default 1, as notebook 02)")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: as pick_device)")
    listing = commands.add_parser(
        "units", help="list the model's units in forward order, with parameter counts")
    _add_model_options(listing)
    listing.add_argument("--json", action="store_true", help="print the units as a JSON list")
    return parser


def model_and_input(args: argparse.Namespace) -> tuple[nn.Module, ModelInput]:
    """The model and example input that the command-line options describe (README)."""
    course = args.model in MODEL_BUILDERS
    if course:
        if args.model_kwargs:
            raise SpecError("--model-kwargs is for your own model; course models take "
                            "--width and --depth")
        model = build_model(args.model, width=args.width, depth=args.depth)
    else:
        if args.width is not None or args.depth is not None:
            raise SpecError("--width and --depth are for the course models; pass your "
                            "model's arguments with --model-kwargs '{...}'")
        model = load_model(args.model, parse_kwargs(args.model_kwargs))
    if args.input and args.input_shape:
        raise SpecError("give either --input-shape or --input, not both")
    if args.input:
        return model, load_input(args.input)
    if args.input_shape:
        return model, make_input(parse_shape(args.input_shape), args.input_dtype, args.vocab)
    if course:
        return model, example_input(model, batch=args.batch)
    raise SpecError("your own model needs an example input: --input-shape 16,3,224,224 "
                    "(with --input-dtype long --vocab N for token ids) or --input module:callable")


def run_profile(args: argparse.Namespace) -> pd.DataFrame:
    """Profile the model the options describe: a depth sweep or one chosen set."""
    model, example = model_and_input(args)
    device = pick_device(args.device)
    modes = ("prefix", "suffix") if args.mode == "both" else (args.mode,)
    if args.as_is:
        modes = ("as_is", *modes)
    freeze = None
    if args.freeze is not None:
        freeze = [name.strip() for name in args.freeze.split(",") if name.strip()]
        if not freeze:
            raise SpecError("--freeze needs at least one unit name; see the `units` command")
    return profile_freezing(model, example, modes=modes, device=device, repeats=args.repeats,
                            frozen=freeze, memory=args.memory or False, progress=True,
                            predict=args.predict)


def list_units(args: argparse.Namespace) -> FreezeSummary:
    """The model's units in forward-execution order, with parameter counts."""
    model, example = model_and_input(args)
    device = pick_device(args.device)
    with on_device(model, device):
        order = execution_order(model, to_device(example, device))
    return freeze_summary(model, order)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m autograd_cost` and `autograd-cost`.

    Bad input (a model that does not import, a callable that fails, an input the model
    rejects, an unknown unit) prints one line on stderr and returns 2, never a traceback.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # import your own modules from here, as python -m does
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            from autograd_cost.bench import run_bench

            print(run_bench(threads=args.threads, device=str(pick_device(args.device))))
            return 0
        if args.command == "units":
            summary = list_units(args)
            if args.json:
                json.dump([asdict(row) for row in summary], sys.stdout, indent=1)
                sys.stdout.write("\n")
            else:
                print(summary)
            return 0
        if args.keep_freed_memory and not keep_freed_memory():
            print("--keep-freed-memory needs glibc; measuring with the default allocator",
                  file=sys.stderr)
        rows = run_profile(args)
    except (SpecError, ValueError, TypeError, RuntimeError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(json.loads(rows.to_json(orient="records")), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(profile_table(rows).to_string(index=False))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        plot_profile(rows, path=args.plot, title=f"{args.model}, input {_input_label(args)}")
        print(f"saved the figure to {args.plot}", file=sys.stderr)
    return 0


def _input_label(args: argparse.Namespace) -> str:
    if args.input_shape:
        return args.input_shape
    return "from --input" if args.input else f"batch {args.batch}"
