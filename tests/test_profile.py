"""profile_freezing: the result schema, restoration of the model, and clear errors."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch import nn

from autograd_cost import mlp, profile_freezing, small_cnn, with_ratios
from autograd_cost.cli import build_parser, main
from autograd_cost.cost import count_flops
from autograd_cost.profile import MEMORY_COLUMNS, PROFILE_COLUMNS, profile_table


def snapshot(model):
    return (
        [p.requires_grad for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [b.clone() for b in model.buffers()],
        [m.training for m in model.modules()],
    )


def assert_same(a, b):
    assert a[0] == b[0]
    for ga, gb in zip(a[1], b[1], strict=True):
        assert (ga is None and gb is None) or torch.equal(ga, gb)
    for ba, bb in zip(a[2], b[2], strict=True):
        assert torch.equal(ba, bb)
    assert a[3] == b[3]


def test_rows_have_exactly_the_documented_columns_and_all_depths():
    model = mlp(width=8, depth=2)
    frame = profile_freezing(model, torch.randn(4, 64), repeats=1)
    assert list(frame.columns) == list(PROFILE_COLUMNS)
    assert list(zip(frame["mode"], frame["freeze_depth"], strict=True)) == [
        (m, d) for m in ("prefix", "suffix") for d in range(4)
    ]
    rows = frame.to_dict("records")
    assert rows[1]["frozen_units"] == ("fc1",) and rows[5]["frozen_units"] == ("head",)
    total = sum(p.numel() for p in model.parameters())
    assert all(r["trainable_params"] + r["frozen_params"] == total for r in rows)
    full = rows[3]
    assert full["backward_flops"] == 0 and full["backward_seconds"] == 0.0
    assert full["saved_activation_bytes"] == 0
    # The counts are the instruments' own (oracle: cost.count_flops on a hand-frozen copy).
    model.fc1.requires_grad_(False)
    assert rows[1]["backward_flops"] == count_flops(model, torch.randn(4, 64)).backward


def test_as_is_row_measures_the_configured_model_without_unfreezing_it():
    model = mlp(width=8, depth=2)
    model.fc1.weight.requires_grad_(False)  # a partial freeze inside a unit
    model.head.requires_grad_(False)
    before = snapshot(model)
    frame = profile_freezing(model, torch.randn(4, 64), modes=("as_is", "prefix"), repeats=1)
    assert_same(before, snapshot(model))
    as_is = frame.iloc[0]
    assert as_is["mode"] == "as_is" and pd.isna(as_is["freeze_depth"])
    assert as_is["trainable_params"] == sum(p.numel() for p in model.parameters()
                                            if p.requires_grad)
    assert as_is["frozen_units"] == ("head",)  # fc1 still trains its bias
    assert as_is["backward_flops"] == count_flops(model, torch.randn(4, 64)).backward
    ratios = with_ratios(frame)
    assert ratios.iloc[0]["flop_ratio"] == as_is["backward_flops"] / frame.iloc[1]["backward_flops"]


def test_memory_option_adds_the_memory_columns():
    frame = profile_freezing(mlp(width=8, depth=1), torch.randn(2, 64), modes=["prefix"],
                             freeze_depths=[0, 2], repeats=1, memory="sgd")
    assert list(frame.columns) == [*PROFILE_COLUMNS, *MEMORY_COLUMNS]
    assert frame["optimizer_state_bytes"].tolist() == [0, 0]  # plain SGD keeps no state
    assert frame["gradients_bytes"].iloc[1] == 0


def test_rows_agree_with_ratios_and_prefix_beats_suffix_in_flops():
    rows = with_ratios(profile_freezing(mlp(width=16, depth=3), torch.randn(4, 64), repeats=1))
    prefix = {r["freeze_depth"]: r for r in rows.to_dict("records") if r["mode"] == "prefix"}
    suffix = {r["freeze_depth"]: r for r in rows.to_dict("records") if r["mode"] == "suffix"}
    for depth in range(1, 4):
        assert prefix[depth]["flop_ratio"] < suffix[depth]["flop_ratio"] < 1
        assert prefix[depth]["saved_activation_bytes"] <= suffix[depth]["saved_activation_bytes"]


def test_model_state_is_unchanged_afterwards():
    model = small_cnn(channels=2, hidden=4)
    x = torch.randn(4, 1, 8, 8)
    model(x).sum().backward()
    model.fc.requires_grad_(False)
    model.eval()
    before = snapshot(model)
    profile_freezing(model, x, target=torch.tensor([0, 1, 2, 3]), modes=["suffix"],
                     freeze_depths=[0, 2], repeats=1)
    assert_same(before, snapshot(model))


def test_target_without_loss_fn_uses_cross_entropy():
    model = mlp(width=8, depth=1)
    x, y = torch.randn(4, 64), torch.tensor([1, 2, 3, 4])
    rows = profile_freezing(model, x, target=y, modes=["prefix"], freeze_depths=[0], repeats=1)
    custom = profile_freezing(model, x, target=y, loss_fn=nn.functional.cross_entropy,
                              modes=["prefix"], freeze_depths=[0], repeats=1)
    assert rows["backward_flops"][0] == custom["backward_flops"][0] > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"freeze_depths": [0, 9]}, ValueError,
         r"depth 9 is out of range .* valid depths are 0\.\.3"),
        ({"modes": ["middle"]}, ValueError, r"valid modes are \['as_is', 'prefix', 'suffix'\]"),
        ({"repeats": 0}, ValueError, "repeats must be a positive int"),
    ],
)
def test_bad_arguments_raise_and_leave_the_model_unchanged(kwargs, error, message):
    model = mlp(width=8, depth=2)
    before = snapshot(model)
    with pytest.raises(error, match=message):
        profile_freezing(model, torch.randn(4, 64), **kwargs)
    assert_same(before, snapshot(model))


def test_input_that_does_not_fit_shows_its_shape():
    model = mlp(width=8, depth=2)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"example input of shape \(4, 3\) does not fit"):
        profile_freezing(model, torch.randn(4, 3))
    assert_same(before, snapshot(model))


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor or a tuple of tensors"):
        profile_freezing(mlp(depth=1), [[1.0] * 64])


def test_model_without_parameters_is_refused():
    with pytest.raises(ValueError, match="has no parameters"):
        profile_freezing(nn.ReLU(), torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module"):
        profile_freezing(lambda x: x, torch.randn(2, 3))


def test_profile_table_without_timings_is_deterministic():
    rows = profile_freezing(mlp(width=8, depth=1), torch.randn(2, 64), repeats=1)
    table = profile_table(rows, timings=False)
    assert "bwd ms" not in table.columns and len(table) == len(rows)
    again = profile_table(profile_freezing(mlp(width=8, depth=1), torch.randn(2, 64), repeats=1),
                          timings=False)
    assert table.to_html() == again.to_html()
    assert "bwd ms" in profile_table(rows).columns


def test_cli_prints_json_rows_and_saves_a_plot(capsys, tmp_path):
    plot = tmp_path / "cost.png"
    assert main(["profile", "--model", "mlp", "--width", "8", "--depth", "2", "--batch", "4",
                 "--repeats", "1", "--json", "--plot", str(plot)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [tuple(r) for r in rows] == [tuple(PROFILE_COLUMNS)] * 8
    assert plot.stat().st_size > 10_000


def test_cli_table_and_bad_arguments(capsys):
    assert main(["profile", "--model", "cnn", "--width", "2", "--batch", "2", "--mode", "prefix",
                 "--repeats", "1"]) == 0
    assert "bwd FLOPs" in capsys.readouterr().out
    assert main(["profile", "--model", "vgg", "--input-shape", "2,3"]) == 2
    assert "unknown model 'vgg': use a course model (cnn, mlp, transformer)" in (
        capsys.readouterr().err)


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "autograd_cost", "profile", "--model", "transformer", "--width",
         "16", "--depth", "1", "--batch", "2", "--mode", "suffix", "--repeats", "1", "--json"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    rows = json.loads(out.stdout)
    assert rows[0]["mode"] == "suffix" and rows[-1]["backward_flops"] == 0


def test_keep_freed_memory_flag_parses_and_works_on_glibc():
    args = build_parser().parse_args(["profile", "--keep-freed-memory"])
    assert args.keep_freed_memory
    # mallopt changes the whole process, so it runs in a child, not in pytest's own process.
    done = subprocess.run(
        [sys.executable, "-c", "from autograd_cost.timing import keep_freed_memory as k; "
                               "print(k())"],
        capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == str(sys.platform == "linux")


def test_freeze_profiles_one_chosen_set_against_unfrozen():
    model = mlp(width=8, depth=3)
    x = torch.randn(4, 64)
    before = snapshot(model)
    rows = with_ratios(profile_freezing(model, x, frozen=["head", "fc2"], repeats=1))
    rows = rows.to_dict("records")
    assert [(r["mode"], r["freeze_depth"], r["frozen_units"]) for r in rows] == [
        ("unfrozen", 0, ()), ("chosen", 2, ("fc2", "head"))]
    assert rows[0]["flop_ratio"] == 1.0
    sweep = profile_freezing(model, x, repeats=1).to_dict("records")
    unfrozen = next(r for r in sweep if r["freeze_depth"] == 0)
    assert rows[0]["backward_flops"] == unfrozen["backward_flops"]
    assert_same(before, snapshot(model))
    with pytest.raises(ValueError, match="valid units are"):
        profile_freezing(model, x, frozen=["fc9"])
    with pytest.raises(ValueError, match="not both"):
        profile_freezing(model, x, frozen=["fc1"], freeze_depths=[1])


def test_cli_predict_adds_the_predicted_columns(capsys):
    assert main(["profile", "--model", "mlp", "--width", "8", "--depth", "1", "--batch", "2",
                 "--mode", "prefix", "--repeats", "1", "--predict"]) == 0
    assert "predicted ms" in capsys.readouterr().out
    assert main(["profile", "--model", "mlp", "--width", "8", "--depth", "1", "--batch", "2",
                 "--mode", "prefix", "--repeats", "1", "--predict", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["predicted_backward_seconds"] >= 0 for r in rows)
    assert rows[-1]["predicted_backward_seconds"] == 0.0
