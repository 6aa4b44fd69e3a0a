"""Real data offline: deterministic train/test splits of scikit-learn's 8x8 digits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DIGIT_SIDE = 8
DIGIT_MAX_INK = 16.0  # load_digits pixels are integers 0..16


@dataclass(frozen=True)
class DigitSplit:
    """Train and test images (N, 1, 8, 8) in [0, 1] and their digit labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    digits: tuple[int, ...]

    def to(self, device: torch.device | str) -> DigitSplit:
        """The same split with every tensor on `device`."""
        move = [t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)]
        return DigitSplit(*move, self.digits)

    def __repr__(self) -> str:
        return (
            f"DigitSplit(digits={list(self.digits)}, train={len(self.train_y)}, "
            f"test={len(self.test_y)})"
        )


def _check_digits(digits: Sequence[int]) -> tuple[int, ...]:
    if isinstance(digits, (str, bytes)) or not isinstance(digits, Sequence):
        raise TypeError(f"digits must be a sequence of ints 0..9, got {type(digits).__name__}")
    chosen = tuple(digits)
    bad = [d for d in chosen if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 9]
    if bad or not chosen:
        raise ValueError(f"digits must be distinct ints in 0..9, got {list(chosen)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"digits must be distinct ints in 0..9, got {list(chosen)}")
    return chosen


def _check_fraction(test_fraction: float) -> None:
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1, "
                         f"got {test_fraction!r}")


def _stratified_indices(
    labels: np.ndarray, digits: tuple[int, ...], test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per digit, a seeded shuffle; the first round(test_fraction * n) go to the test set."""
    rng = np.random.RandomState(seed)  # legacy generator: the same stream in every NumPy
    train, test = [], []
    for digit in digits:
        members = np.flatnonzero(labels == digit)
        shuffled = members[rng.permutation(len(members))]
        cut = round(test_fraction * len(members))
        test.append(shuffled[:cut])
        train.append(shuffled[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digit_split(
    digits: Sequence[int] = tuple(range(10)), test_fraction: float = 0.25, seed: int = 0
) -> DigitSplit:
    """A seeded, stratified train/test split of load_digits restricted to `digits` (notebook 05).

    Labels stay the real digit (5..9 stay 5..9), so the course CNN's 10-way head fits any
    subset. Nothing is downloaded: the images ship with scikit-learn.
    """
    chosen = _check_digits(digits)
    _check_fraction(test_fraction)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images / DIGIT_MAX_INK, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    train, test = _stratified_indices(bunch.target, chosen, test_fraction, seed)
    train_t, test_t = torch.from_numpy(train), torch.from_numpy(test)
    return DigitSplit(images[train_t], labels[train_t], images[test_t], labels[test_t], chosen)


def load_digit_images(count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` digits, all if None: (N, 1, 8, 8) in [0, 1] and labels (notebook 03)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    total = len(bunch.target)
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                              or not 1 <= count <= total):
        raise ValueError(f"count must be an int in 1..{total} or None, got {count!r}")
    images = torch.tensor(bunch.images[:count], dtype=torch.float32).unsqueeze(1) / DIGIT_MAX_INK
    return images, torch.tensor(bunch.target[:count], dtype=torch.long)


def batch_order(
    num_samples: int, batch_size: int, epochs: int, seed: int = 0
) -> list[torch.Tensor]:
    """Index batches for every epoch, reshuffled per epoch from one seed (notebook 05).

    The same arguments give the same batches on every machine; the last batch of an epoch
    may be smaller.
    """
    for name, value in {"num_samples": num_samples, "batch_size": batch_size,
                        "epochs": epochs}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    batches: list[torch.Tensor] = []
    for _ in range(epochs):
        permutation = torch.randperm(num_samples, generator=generator)
        batches.extend(permutation.split(batch_size))
    return batches
