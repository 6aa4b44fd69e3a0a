"""Self-checks for notebook 10: predict a model's backward time with the per-op cost model."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from autograd_cost.core import ModelInput
from autograd_cost.costmodel import predict_backward_seconds
from autograd_cost.exercises import check_answer, require_number


def check_predicted_ratio(answer: object, model: nn.Module, example_input: ModelInput,
                          frozen: Sequence[str]) -> bool:
    """Is `answer` the cost model's backward time with `frozen` over unfrozen? (notebook 10)

    Right within 0.02. The prediction uses this session's calibration, as yours does.
    """
    value = require_number(answer)
    unfrozen = predict_backward_seconds(model, example_input, frozen=[]).seconds
    truth = predict_backward_seconds(model, example_input, frozen=list(frozen)).seconds / unfrozen
    return check_answer(value, truth, "that is the cost model's ratio; now measure it.",
                        "predict both times with predict_backward_seconds and divide.",
                        tolerance=0.02)
