"""A batch's observations binned per series in C (_scan.bin_values) must equal the numpy reference
(traces/binning.bin_reference) exactly, and both a Histogram filled one value at a time: bucket
counts, exact sums, zeros, native buckets (keys in the same order), each bucket's last observation.
Then the whole aggregate a batch leaves, and its journal record, with the C binning and without."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.histogram import DEFAULT_STAGE_BUCKETS, Histogram
from exporter.stages import protocol_codes
from exporter.traces import binning
from exporter.traces.aggregate import RESPONSE_BOUNDS, TraceAggregate
from exporter.traces.binning import Binned, bin_reference, bin_values
from exporter.traces.source import bounds_ns
from tests.test_small_batches import random_batches, state

STAGE_BOUNDS = bounds_ns(list(DEFAULT_STAGE_BUCKETS))
# a native bucket's bounds in ns (the exposed unit is seconds: 2**(j / 16) s, and the ns nearest it)
NATIVE_EDGES = [int(2.0 ** (j / 16) * 1e9) + d for j in range(-200, 120, 7) for d in (-1, 0, 1)]


def _values(bounds: tuple[int, ...]) -> st.SearchStrategy[int]:
    near = [b + d for b in bounds for d in (-1, 0, 1) if b + d >= 0]
    return st.one_of(
        st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9]),
        st.sampled_from(near),
        st.sampled_from([e for e in NATIVE_EDGES if e > 0]),
        st.integers(0, 10**12),
        st.integers(2**53 - 4, 2**53 + 4),  # where float64 stops holding every integer
        st.integers(2**53, 2**63 - 1),  # huge: sums past 2**63 are Python integers
    )


def _equal(a: Binned, b: Binned) -> None:
    per_a, cells_a, lasts_a = a
    per_b, cells_b, lasts_b = b
    assert cells_a == cells_b and lasts_a == lasts_b
    assert len(per_a) == len(per_b)
    for x, y in zip(per_a, per_b, strict=True):
        assert x[:5] == y[:5]
        assert list(x[5].items()) == list(y[5].items())  # the same buckets, keys in the same order
        assert all(type(v) is int for v in (x[0], *x[2:5], *x[1], *x[5], *x[5].values()))


def _check(series: list[int], values: list[int], n_series: int, bounds: tuple[int, ...], unit: float) -> None:
    s, v = np.asarray(series, dtype=np.int64), np.asarray(values, dtype=np.int64)
    got = bin_values(s, v, n_series, bounds, unit)
    ref = bin_reference(s, v, n_series, bounds, unit)
    _equal(got, ref)
    # a third account: each series' values filled into a Histogram one at a time, in order
    for sid, counts, total, count, zero, native in got[0]:
        h = Histogram(bounds)
        h.fill([x for x, y in zip(values, series, strict=True) if y == sid], unit)
        assert (h.counts, h.total, h.count, h.zero, h.native) == (counts, total, count, zero, native)
    width = len(bounds) + 1
    for cell, pos in zip(got[1], got[2], strict=True):  # the last observation of each bucket
        sid, b = divmod(cell, width)
        later = [i for i in range(pos + 1, len(values)) if series[i] == sid and _bucket(bounds, values[i]) == b]
        assert series[pos] == sid and _bucket(bounds, values[pos]) == b and not later


def _bucket(bounds: tuple[int, ...], v: int) -> int:
    return next((i for i, b in enumerate(bounds) if v <= b), len(bounds))


def test_the_compiled_binning_is_built_and_used() -> None:
    assert binning._bin_c is not None  # the C scanner is built wherever the tests run


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_c_binning_equals_the_reference(data: st.DataObject) -> None:
    bounds, unit = data.draw(st.sampled_from([(STAGE_BOUNDS, 1e9), (RESPONSE_BOUNDS, 1.0)]))
    n_series = data.draw(st.integers(1, 120))
    obs = data.draw(st.lists(st.tuples(st.integers(0, n_series - 1), _values(bounds)), max_size=300))
    _check([s for s, _ in obs], [v for _, v in obs], n_series, bounds, unit)


def test_many_series_and_edges() -> None:
    rng = random.Random(3)
    edges = [0, 1, *STAGE_BOUNDS, *(b + 1 for b in STAGE_BOUNDS), *(b - 1 for b in STAGE_BOUNDS), 2**53 - 1, 2**53,
             2**53 + 1, 2**62, 2**63 - 1, *(e for e in NATIVE_EDGES if e > 0)]
    values = edges + [rng.randrange(0, 10**11) for _ in range(5000)]
    series = [rng.randrange(0, 3000) for _ in values]
    _check(series, values, 3000, STAGE_BOUNDS, 1e9)
    _check([0, 1, 0], [-5, 3, 0], 2, STAGE_BOUNDS, 1e9)  # (none reach it: a negative counts as a zero, as fill())
    big = [2**63 - 1] * 5  # one series' sum far past 2**63, exact
    _check([7] * 5, big, 8, STAGE_BOUNDS, 1e9)
    assert bin_values(np.full(5, 7), np.asarray(big), 8, STAGE_BOUNDS, 1e9)[0][0][2] == 5 * (2**63 - 1)


def test_nothing_and_bad_input() -> None:
    empty = np.zeros(0, dtype=np.int64)
    _equal(bin_values(empty, empty, 0, STAGE_BOUNDS, 1e9), ([], [], []))
    _equal(bin_reference(empty, empty, 4, STAGE_BOUNDS, 1e9), ([], [], []))
    for fn in (bin_values, bin_reference):
        with pytest.raises(ValueError):
            fn(np.asarray([0, 4]), np.asarray([1, 2]), 4, STAGE_BOUNDS, 1e9)
        with pytest.raises(ValueError):
            fn(np.asarray([-1]), np.asarray([1]), 4, STAGE_BOUNDS, 1e9)
    with pytest.raises(ValueError):
        bin_values(np.asarray([0, 1]), np.asarray([1]), 4, STAGE_BOUNDS, 1e9)


def _observed(rows: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    agg = TraceAggregate(STAGE_BOUNDS)
    for b in random_batches(seed, rows):
        agg.observe_batch(b, protocol_codes(b.stamps), ["node"], max_models=3)
    return state(agg), agg.to_delta_json()


@pytest.mark.parametrize("seed", [1, 2])
def test_observe_batch_leaves_the_same_state_with_and_without_the_compiled_binning(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _observed(64, seed)
    monkeypatch.setattr(binning, "_bin_c", None)
    slow = _observed(64, seed)
    for a, b in zip(fast, slow, strict=True):
        assert a == b
    assert fast[0]["histograms"] and fast[0]["responses"] and fast[0]["exemplars"] and fast[1]["h"]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_plus_and_add_equal_copy_then_merge(data: st.DataObject) -> None:
    def histogram() -> Histogram:
        n = data.draw(st.sampled_from([len(STAGE_BOUNDS) + 1, 3]))  # 3: a state file written with other bounds
        native = data.draw(st.one_of(st.none(), st.dictionaries(st.integers(-300, 300), st.integers(1, 10**6))))
        return Histogram(STAGE_BOUNDS, data.draw(st.lists(st.integers(0, 2**62), min_size=n, max_size=n)),
                         data.draw(st.integers(0, 2**70)), data.draw(st.integers(0, 2**40)), native,
                         data.draw(st.integers(0, 10**6)))

    a, b = histogram(), histogram()
    if len(b.counts) > len(a.counts):
        a, b = b, a
    was = (a.copy(), b.copy())
    counts = [c + (b.counts[i] if i < len(b.counts) else 0) for i, c in enumerate(a.counts)]
    native = None if a.native is None or b.native is None else {
        k: a.native.get(k, 0) + b.native.get(k, 0) for k in {*a.native, *b.native}}
    ref = Histogram(STAGE_BOUNDS, counts, a.total + b.total, a.count + b.count, native, a.zero + b.zero)
    assert a.plus(b) == ref
    assert (a, b) == was  # neither changed
    a.add(b.counts, b.total, b.count, b.native, b.zero)
    assert a == ref
