"""minGPT's sort task data: correct targets, mask on the sorted half, fixed held-out split."""
import numpy as np
import pytest

from jaxmodels.data.sort import SortSource, is_val_sequence
from jaxmodels.data.text import lm_data_config, seq_len_of, sort_dataset


def test_examples_are_digits_then_sorted_with_mask_on_sorted_half():
    src = SortSource("train", seed=0, length=6, num_digits=3)
    for i in range(50):
        ex = src[i]
        seq = np.concatenate([ex["inputs"], ex["targets"][-1:]])
        digits = seq[:6]
        np.testing.assert_array_equal(seq[6:], np.sort(digits))
        np.testing.assert_array_equal(ex["targets"], seq[1:])
        np.testing.assert_array_equal(ex["mask"], [0] * 5 + [1] * 6)
        assert ex["inputs"].dtype == np.int32 and digits.min() >= 0 and digits.max() <= 2
    assert seq_len_of(lm_data_config(source="sort", sort_length=6)) == 11


def test_deterministic_by_index_and_seed():
    a, b = SortSource("train", seed=0), SortSource("train", seed=0)
    np.testing.assert_array_equal(a.digits(123), b.digits(123))
    draws = np.stack([a.digits(i) for i in range(40)])
    assert not np.array_equal(draws, np.stack([SortSource("train", seed=1).digits(i) for i in range(40)]))


def test_train_and_val_sequences_are_disjoint():
    train = {tuple(SortSource("train", 0).digits(i)) for i in range(600)}
    val = {tuple(SortSource("val", 0).digits(i)) for i in range(600)}
    assert not train & val
    assert all(not is_val_sequence(np.array(s)) for s in train)
    assert all(is_val_sequence(np.array(s)) for s in val)
    everything = [np.array(np.unravel_index(k, (3,) * 6)) for k in range(3 ** 6)]
    held_out = np.mean([is_val_sequence(s) for s in everything])
    assert 0.18 < held_out < 0.32  # about a quarter of all 729 sequences


def test_repeated_digits_are_boosted_like_mingpt():
    src = SortSource("train", seed=0)
    draws = np.stack([src.digits(i) for i in range(20000)])
    constant = np.mean([len(np.unique(d)) == 1 for d in draws])
    # Uniform draws are constant with probability 3/729 = 0.41%; minGPT's rejection (half
    # of all other draws are redrawn) doubles their odds: 3 / (3 + 726/2) = 0.82%.
    assert 0.0065 < constant < 0.0100


def test_sort_dataset_batches_and_resume():
    cfg = lm_data_config(source="sort", num_threads=1, prefetch=2)
    it = iter(sort_dataset(cfg, "train", 8, seed=0))
    b = next(it)
    assert b["inputs"].shape == (8, 11) and b["mask"].sum() == 8 * 6
    state = it.get_state()
    nxt = next(it)
    fresh = iter(sort_dataset(cfg, "train", 8, seed=0))
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["inputs"], nxt["inputs"])
    with pytest.raises(ValueError):
        SortSource("test", 0)
