"""Self-check helpers for the notebooks' exercises: they say right or wrong, never the answer.

One module per notebook topic, e.g. `autograd_cost.exercises.graphs` for notebook 01.
Every checker prints one line through `report` and returns True or False.
"""


def report(ok: bool, success: str, hint: str) -> bool:
    """Print a one-line verdict and return it; every checker uses it (notebook 00)."""
    print(f"✅ Correct: {success}" if ok else f"❌ Not yet: {hint}")
    return ok
