"""autograd_cost: measure what autograd costs when layers are frozen.

The library behind the notebook course "Frozen layers, measured". Importing it has no side
effects.
"""

from autograd_cost.cost import (
    Flops,
    Timing,
    backward_flops,
    backward_seconds,
    count_flops,
    forward_flops,
    pick_device,
    saved_activation_bytes,
    synchronize,
    time_repeats,
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
    count_table,
    default_loss,
    draw_freeze,
    draw_graph,
    format_nodes,
    model_loss,
    node_counts,
    removed_nodes,
)
from autograd_cost.models import build_model, example_input, mlp, small_cnn, tiny_transformer
from autograd_cost.profile import format_profile, plot_profile, profile_freezing, with_ratios

__all__ = [
    "Flops",
    "Timing",
    "backward_flops",
    "backward_nodes",
    "backward_seconds",
    "build_model",
    "count_flops",
    "count_table",
    "default_loss",
    "draw_freeze",
    "draw_graph",
    "example_input",
    "execution_order",
    "format_nodes",
    "format_profile",
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
    "removed_nodes",
    "saved_activation_bytes",
    "small_cnn",
    "synchronize",
    "time_repeats",
    "tiny_transformer",
    "units",
    "with_ratios",
]
