"""Self-check helpers for the notebooks' exercises: they say right or wrong, never the answer.

One module per notebook topic, e.g. `autograd_cost.exercises.graphs` for notebook 01.
Every checker prints one line through `report` and returns True or False; numeric checkers
share `check_answer`, and validate the answer with `require_number` or `require_int`.
"""

from __future__ import annotations


def report(ok: bool, success: str, hint: str) -> bool:
    """Print a one-line verdict and return it; every checker uses it (notebook 00)."""
    print(f"✅ Correct: {success}" if ok else f"❌ Not yet: {hint}")
    return ok


def require_number(answer: object) -> float:
    """Refuse an answer that is not a number, with a clear TypeError (notebook 00)."""
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise TypeError(f"answer must be a number, got {type(answer).__name__}")
    return float(answer)


def require_int(answer: object) -> int:
    """Refuse an answer that is not an int (a count of bytes or FLOPs) (notebook 00)."""
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise TypeError(f"answer must be an int, got {type(answer).__name__}")
    return answer


def direction(answer: float, truth: float) -> str:
    """"too high" or "too low": the start of every numeric hint (notebook 00)."""
    return "too high" if answer > truth else "too low"


def check_answer(answer: float, truth: float, success: str, why: str = "",
                 tolerance: float = 0.0, relative: bool = False) -> bool:
    """Report whether `answer` is within `tolerance` of `truth`; else "too high/low: why".

    `relative=True` makes the tolerance a fraction of `truth`.
    """
    allowed = tolerance * abs(truth) if relative else tolerance
    if abs(answer - truth) <= allowed:
        return report(True, success, "")
    return report(False, "", direction(answer, truth) + (f": {why}" if why else "."))
