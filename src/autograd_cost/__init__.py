"""autograd_cost: measure what autograd costs when layers are frozen.

The library behind the notebook course "Frozen layers, measured". Importing it has no side
effects.
"""

from autograd_cost.core import default_loss, model_loss, pick_device, synchronize
from autograd_cost.cost import (
    Flops,
    backward_flops,
    count_flops,
    forward_flops,
    saved_activation_bytes,
)
from autograd_cost.freezing import (
    execution_order,
    freeze_prefix,
    freeze_suffix,
    freeze_summary,
    freeze_units,
    frozen,
    preserved_requires_grad,
    preserved_state,
    units,
)
from autograd_cost.graph import (
    backward_nodes,
    draw_freeze,
    draw_graph,
    node_counts,
    removed_nodes,
)
from autograd_cost.models import build_model, example_input, mlp, small_cnn, tiny_transformer
from autograd_cost.profile import plot_profile, profile_freezing, profile_table, with_ratios
from autograd_cost.timing import Timing, backward_seconds, time_repeats

__all__ = [
    "Flops",
    "Timing",
    "backward_flops",
    "backward_nodes",
    "backward_seconds",
    "build_model",
    "count_flops",
    "default_loss",
    "draw_freeze",
    "draw_graph",
    "example_input",
    "execution_order",
    "forward_flops",
    "freeze_prefix",
    "freeze_suffix",
    "freeze_summary",
    "freeze_units",
    "frozen",
    "mlp",
    "model_loss",
    "node_counts",
    "pick_device",
    "plot_profile",
    "preserved_requires_grad",
    "preserved_state",
    "profile_freezing",
    "profile_table",
    "removed_nodes",
    "saved_activation_bytes",
    "small_cnn",
    "synchronize",
    "time_repeats",
    "tiny_transformer",
    "units",
    "with_ratios",
]
