"""load_digit_split against scikit-learn's own arrays; batch_order covers every sample."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from autograd_cost.data import batch_order, load_digit_split


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_split_is_stratified_and_complete(digits):
    split = load_digit_split(range(5, 10), test_fraction=0.25, seed=0)
    counts = np.bincount(digits.target, minlength=10)
    for digit in range(5, 10):
        n_test = int((split.test_y == digit).sum())
        n_train = int((split.train_y == digit).sum())
        assert n_test == round(0.25 * counts[digit])
        assert n_train + n_test == counts[digit]
    assert set(split.train_y.tolist()) == set(range(5, 10)) == set(split.test_y.tolist())


def test_images_are_the_dataset_scaled_to_unit_range(digits):
    split = load_digit_split(range(3), seed=1)
    assert split.train_x.shape[1:] == (1, 8, 8) and split.train_x.dtype == torch.float32
    assert split.train_y.dtype == torch.long
    chosen = digits.images[np.isin(digits.target, [0, 1, 2])] / 16.0
    ours = torch.cat([split.train_x, split.test_x]).squeeze(1).numpy()
    # the same multiset of images: compare rows sorted lexicographically
    key = lambda a: a.reshape(len(a), -1)[np.lexsort(a.reshape(len(a), -1).T[::-1])]  # noqa: E731
    np.testing.assert_allclose(key(ours), key(chosen), rtol=0, atol=1e-7)
    assert split.train_x.min() >= 0.0 and split.train_x.max() <= 1.0


def test_train_and_test_are_disjoint():
    split = load_digit_split()
    def rows(images, labels):
        pairs = zip(images, labels, strict=True)
        return [(*x.flatten().tolist(), int(y)) for x, y in pairs]

    train = set(rows(split.train_x, split.train_y))
    test_rows = rows(split.test_x, split.test_y)
    # load_digits has a few exact duplicate images; allow only those
    overlap = [row for row in test_rows if row in train]
    assert len(overlap) <= 5
    assert len(split.train_y) + len(split.test_y) == 1797


def test_split_is_deterministic_and_seeded():
    a, b = load_digit_split(range(5), seed=3), load_digit_split(range(5), seed=3)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = load_digit_split(range(5), seed=4)
    assert not torch.equal(a.test_x, c.test_x)


def test_to_device_and_repr():
    split = load_digit_split(range(2)).to("cpu")
    assert split.digits == (0, 1)
    assert repr(split).startswith("DigitSplit(digits=[0, 1], train=")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"digits": [10]}, "0..9"),
        ({"digits": [1, 1]}, "distinct"),
        ({"digits": []}, "0..9"),
        ({"digits": "01"}, "sequence of ints"),
        ({"test_fraction": 0}, "strictly between 0 and 1"),
        ({"test_fraction": 1.0}, "strictly between 0 and 1"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_bad_input_is_explained(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        load_digit_split(**kwargs)


def test_batch_order_covers_every_sample_once_per_epoch():
    batches = batch_order(10, 4, epochs=3, seed=0)
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    for epoch in range(3):
        seen = torch.cat(batches[3 * epoch : 3 * epoch + 3]).sort().values
        assert torch.equal(seen, torch.arange(10))
    again = batch_order(10, 4, 3, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(batches, again, strict=True))
    assert not torch.equal(batches[0], batches[3])  # reshuffled each epoch


@pytest.mark.parametrize("args", [(0, 4, 1), (10, 0, 1), (10, 4, 0), (10, 4.0, 1)])
def test_batch_order_rejects_bad_sizes(args):
    with pytest.raises(ValueError, match="positive int"):
        batch_order(*args)
