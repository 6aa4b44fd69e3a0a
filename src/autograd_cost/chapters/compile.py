"""Notebook 09's plumbing: freeze schedules under torch.compile, the checks of compiled steps."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from autograd_cost.compiled import count_compiles
from autograd_cost.core import check_positive_int
from autograd_cost.freezing import set_frozen

Forward = Callable[[torch.Tensor], torch.Tensor]


def inductor_missing() -> list[str]:
    """What Inductor's CPU code generation lacks here: a C++ compiler, Python.h (notebook 09).

    Inductor compiles C++ with $CXX (default g++, clang++ on macOS) against the running
    Python's headers. An empty list means both were found.
    """
    compiler = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    missing = [] if shutil.which(compiler) else [f"a C++ compiler ({compiler})"]
    header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not os.path.exists(header):
        missing.append("the Python headers (Python.h)")
    return missing


def speed_backend() -> str:
    """"inductor" when it can build here, else "aot_eager", with a printed reason (notebook 09)."""
    missing = inductor_missing()
    if missing:
        print(f"Inductor cannot build here: missing {' and '.join(missing)}; using aot_eager "
              "(no speed-up expected). On Linux, `make setup` installs them or prints the "
              "command.")
        return "aot_eager"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("DEFAULT", "NO AVX"):  # e.g. ATEN_CPU_CAPABILITY=default
        print(f"ATen runs without vector kernels here ({capability}), and Inductor's cached "
              "kernels may assume them; using aot_eager (no speed-up expected).")
        return "aot_eager"
    try:  # a trial build: e.g. ATEN_CPU_CAPABILITY=default breaks vectorized kernels
        trial = nn.Sequential(nn.Linear(32, 32), nn.ReLU())
        with count_compiles(), torch._inductor.config.patch(fx_graph_cache=False):
            torch.compile(trial, backend="inductor")(torch.randn(16, 32)).sum().backward()
    except Exception as error:  # any build failure: do not use Inductor
        print(f"Inductor failed to build a trial kernel ({type(error).__name__}); using "
              "aot_eager (no speed-up expected).")
        return "aot_eager"
    return "inductor"


def run_schedule(forward: Forward, model: nn.Module, example: torch.Tensor,
                 stages: Sequence[Sequence[str]], steps_per_stage: int = 2) -> None:
    """Freeze each stage's units, run `steps_per_stage` forward + backward steps (notebook 09)."""
    check_positive_int("steps_per_stage", steps_per_stage)
    for frozen_units in stages:
        set_frozen(model, frozen_units)
        for _ in range(steps_per_stage):
            forward(example).sum().backward()
    set_frozen(model, [])


@dataclass(frozen=True)
class StepCheck:
    """One step of a freeze/unfreeze sequence, compiled against eager (notebook 09)."""

    step: int
    frozen: str
    same_grad_is_none: bool
    grads_allclose: bool


def _compare(step: int, frozen: str, eager: nn.Module, twin: nn.Module) -> StepCheck:
    pairs = [(a.grad, b.grad) for a, b in zip(eager.parameters(), twin.parameters(),
                                               strict=True)]
    same_none = all((a is None) == (b is None) for a, b in pairs)
    close = same_none and all(a is None or torch.allclose(a, b, atol=1e-6) for a, b in pairs)
    return StepCheck(step, frozen, same_none, close)


def compare_compiled(eager: nn.Module, compiled: Callable[[torch.Tensor], torch.Tensor],
                     twin: nn.Module, example: torch.Tensor,
                     sequence: Sequence[Sequence[str]]) -> list[StepCheck]:
    """Freeze a model and its compiled twin alike, compare their `.grad` (notebook 09).

    `compiled` must be the compiled `twin`, whose weights equal
    `eager`'s. Grads are set to None before each step.
    """
    rows = []
    for step, frozen_units in enumerate(sequence):
        for model, run in ((eager, eager), (twin, compiled)):
            set_frozen(model, frozen_units)
            for param in model.parameters():
                param.grad = None
            run(example).sum().backward()
        rows.append(_compare(step, "+".join(frozen_units) or "-", eager, twin))
    return rows


class ToggledLayer(nn.Module):
    """The model of PyTorch issue #139476: a call counter in forward, two layers (notebook 09).

    The report's loop froze layer2 before every even call and unfroze it before odd ones.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.layer1 = nn.Linear(width, width)
        self.layer2 = nn.Linear(width, width)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer2(x + self.layer1.bias)
        self.calls += 1
        return out

