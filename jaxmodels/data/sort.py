"""minGPT's sorting task, generated on the fly: read `length` digits in [0, num_digits), then
emit them sorted. E.g. 0 1 2 0 1 2 -> 0 0 1 1 2 2.

One example is the sequence digits ++ sorted (2*length tokens) cut into inputs = seq[:-1] and
targets = seq[1:], with the loss mask on the sorted half only (the first length-1 targets are
more unsorted digits, which cannot be predicted), as minGPT's SortDataset does.

Example i of a split is a pure function of (seed, split, i), so the dataset is random access,
checkpointable and identical on every run. The digit sequences are split by a fixed hash into
"train" (3/4) and "val" (1/4), so val measures sorting sequences never seen in training.
minGPT's sampler also rejects, with probability 1/2, any draw with more than num_digits//2
distinct digits, which makes sequences with many repeats more common; kept here.
"""
from __future__ import annotations

import zlib

import numpy as np

_SPLIT_IDS = {"train": 0, "val": 1}


def is_val_sequence(digits: np.ndarray) -> bool:
    """The fixed held-out rule: a quarter of all digit sequences, by crc32 of their bytes."""
    return zlib.crc32(np.asarray(digits, np.uint8).tobytes()) % 4 == 0


class SortSource:
    """Random-access source of sort examples (for grain.MapDataset.source)."""

    def __init__(self, split: str, seed: int, length: int = 6, num_digits: int = 3,
                 num_examples: int = 2 ** 31 - 1):
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {list(_SPLIT_IDS)}, got {split!r}")
        self.split, self.seed = split, seed
        self.length, self.num_digits = length, num_digits
        self.num_examples = num_examples

    def __len__(self) -> int:
        return self.num_examples

    def digits(self, index: int) -> np.ndarray:
        """The unsorted digits of example `index` (rejection sampling, deterministic)."""
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], int(index)])
        want_val = self.split == "val"
        while True:
            d = rng.integers(0, self.num_digits, size=self.length)
            if rng.random() < 0.5 and len(np.unique(d)) > self.num_digits // 2:
                continue  # minGPT: boost sequences with many repeated digits
            if is_val_sequence(d) == want_val:
                return d

    def __getitem__(self, index: int) -> dict:
        d = self.digits(index)
        seq = np.concatenate([d, np.sort(d)]).astype(np.int32)
        mask = np.zeros(2 * self.length - 1, np.float32)
        mask[self.length - 1:] = 1.0
        return {"inputs": seq[:-1], "targets": seq[1:], "mask": mask}
