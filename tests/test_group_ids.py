"""Group ids: one rule for every id kind, applied identically by every entry point.

The rule (docs/semantics.md, "Group ids"): ids are integers of any size (Python, numpy and torch
integer kinds), strings, bytes, ``None``, tuples / frozensets of valid ids, or other hashable
values equal to themselves. Floats (NaN included, also inside tuples), complex, Decimal,
Fraction and other non-integer numbers, booleans, unhashable values, values that do not equal
themselves (NaT, user objects) and 0-d tensors / arrays are refused with a TypeError or
ValueError naming ``group_ids[i]``; so are containers that are not ordered sequences.

Valid ids must give the groups of a dict-based factorisation of the same Python values (only
equality matters); invalid ids must raise TypeError / ValueError (never StopIteration, never an
internal error) from every entry point, the distributed ones included.
"""

from __future__ import annotations

import decimal
import enum
import fractions
import math

import _hypothesis_profiles  # noqa: F401  (registers and loads the profile)
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dra_kernels as dk
from dra_kernels import api, distributed

# ----------------------------------------------------------------------------- helpers


def _reference_codes(ids: list) -> list[int]:
    """Dense codes from a plain dict of the Python values: what equality says."""
    mapping: dict = {}
    return [mapping.setdefault(g, len(mapping)) for g in ids]


def _same_partition(a: list[int], b: list[int]) -> bool:
    pairs = set(zip(a, b, strict=True))
    return len(pairs) == len(set(a)) == len(set(b))


def _problem(n: int, seed: int = 0):
    gen = np.random.default_rng(seed)
    return gen.normal(size=n), gen.normal(size=(n, 3))


def _entry_points(ids, n: int):
    """Every public function that takes group ids, as zero-argument calls."""
    r, e = _problem(n)
    return {
        "factorize_group_ids": lambda: dk.factorize_group_ids(ids, n),
        "adjust_rewards": lambda: dk.adjust_rewards(r, e, ids, backend="torch"),
        "smi_scores": lambda: dk.smi_scores(e, ids, backend="torch"),
        "group_advantages": lambda: dk.group_advantages(r, ids),
        "dra_advantages": lambda: dk.dra_advantages(r, e, ids, backend="torch"),
        "distributed.adjust_rewards": lambda: distributed.adjust_rewards(r, e, ids),
        "distributed.smi_scores": lambda: distributed.smi_scores(e, ids),
        "distributed.dra_advantages": lambda: distributed.dra_advantages(r, e, ids),
        "distributed.global_group_codes": lambda: distributed.global_group_codes(ids),
    }


class SelfUnequal:
    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return False


class HashRaises:
    def __hash__(self) -> int:
        raise ValueError("no hash for you")


class EqRaises:
    def __hash__(self) -> int:
        return 11

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("cannot compare")


class Colour(enum.IntEnum):
    RED = 1
    BLUE = 2


# ----------------------------------------------------------------------------- the examples


def test_a_tuple_holding_a_list_is_a_type_error_not_stop_iteration():
    with pytest.raises(TypeError, match=r"group_ids\[0\] is a tuple holding an unhashable list"):
        dk.factorize_group_ids([([1],), ([1],)], 2)

    # StopIteration would silently end the caller's generator and lose the batches after it.
    def batches():
        for ids in ([0, 1], [([1],), ([1],)], [2, 3]):
            yield dk.factorize_group_ids(ids, 2).num_groups

    with pytest.raises(TypeError, match="group_ids"):
        list(batches())


@pytest.mark.parametrize(
    "bad, exc, found",
    [
        (decimal.Decimal("NaN"), TypeError, r"a Decimal \(Decimal\('NaN'\)\)"),
        (np.datetime64("NaT"), ValueError, r"a datetime64 \(NaT\)"),
        (np.timedelta64("NaT"), ValueError, r"a timedelta64 \(NaT\)"),
        ((math.nan,), TypeError, r"a tuple holding a float \(nan\)"),
        (("p", (1, math.nan)), TypeError, "a tuple holding a tuple holding a float"),
        (SelfUnequal(), ValueError, "a SelfUnequal .* that does not equal itself"),
        (math.nan, TypeError, r"a float \(nan\)"),
        (np.float32("nan"), TypeError, "a float32"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else None,
)
def test_values_that_never_equal_themselves_are_refused(bad, exc, found):
    ids = ["a", bad, bad, "b"]  # the same object twice: a dict would still put them together
    for name, call in _entry_points(ids, 4).items():
        with pytest.raises(exc, match=rf"group_ids\[1\] is {found}"):
            call()
        assert name


def test_nat_in_a_datetime_array_is_refused_and_other_datetimes_are_ids():
    days = np.array(["2024-01-01", "NaT", "2024-01-01"], dtype="datetime64[D]")
    with pytest.raises(ValueError, match=r"group_ids\[1\] is NaT"):
        dk.factorize_group_ids(days, 3)
    fine = np.array(["2024-01-01", "2024-01-02", "2024-01-01"], dtype="datetime64[D]")
    assert dk.factorize_group_ids(fine, 3).codes.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    "ids",
    [
        [2**63, 1, 2**63],
        [-(2**63) - 1, 2**63 - 1, -(2**63) - 1],
        [2**100, -(2**100), 2**100],
        np.array([2**64 - 1, 1, 2**64 - 1], dtype=np.uint64),
        np.array([2**70, 1, 2**70], dtype=object),
        (2**64, 0, 2**64),
    ],
    ids=["2**63", "below-int64", "2**100", "uint64-max", "object-array", "tuple"],
)
def test_integers_of_any_size_are_exact(ids):
    r, e = _problem(3)
    assert dk.factorize_group_ids(ids, 3).codes.tolist() == [0, 1, 0]
    want = dk.adjust_rewards(r, e, [0, 1, 0], backend="torch")
    for name, call in _entry_points(ids, 3).items():
        out = call()
        if name == "adjust_rewards" or name == "distributed.adjust_rewards":
            assert np.array_equal(out, want), name
    # with small ints beside huge ones, no float is ever made up
    with pytest.raises(ValueError, match="num_groups"):
        dk.adjust_rewards(r, e, ids, num_groups=3)


def test_the_hint_error_names_the_label_the_same_way_everywhere():
    r, e = _problem(1)
    messages = set()
    for call in (
        lambda: dk.adjust_rewards(r, e, ["a"], num_groups=1),
        lambda: distributed.adjust_rewards(r, e, ["a"], num_groups=1),
    ):
        with pytest.raises(ValueError, match="num_groups=1 is a hint") as info:
            call()
        messages.add(str(info.value))
    assert len(messages) == 1


# ----------------------------------------------------------------------------- case by case

VALID = {
    "python ints": ([3, -1, 3], [0, 1, 0]),
    "numpy int scalars": ([np.int8(3), np.uint32(3), 4], [0, 0, 1]),
    "uint64 scalars beyond int64": ([np.uint64(2**64 - 1), 2**64 - 1, 1], [0, 0, 1]),
    "IntEnum": ([Colour.RED, 1, Colour.BLUE], [0, 0, 1]),
    "strings": (["a", "b", "a"], [0, 1, 0]),
    "bytes and str differ": ([b"a", "a", b"a"], [0, 1, 0]),
    "None": ([None, "x", None], [0, 1, 0]),
    "tuples": ([("p", 1), ("p", 2), ("p", 1)], [0, 1, 0]),
    "nested tuples": ([("p", (1, "x")), ("p", (1, "y")), ("p", (1, "x"))], [0, 1, 0]),
    "frozensets": ([frozenset({1, 2}), frozenset({2, 1}), frozenset({3})], [0, 0, 1]),
    "1 and '1' differ": ([1, "1", 1], [0, 1, 0]),
    "range": (range(3), [0, 1, 2]),
    "numpy unicode": (np.array(["u1", "u2", "u1"]), [0, 1, 0]),
    "numpy bytes": (np.array([b"u1", b"u2", b"u1"]), [0, 1, 0]),
    "torch uint8": (torch.tensor([7, 8, 7], dtype=torch.uint8), [0, 1, 0]),
}


@pytest.mark.parametrize("case", list(VALID))
def test_valid_ids_give_the_groups_of_equality(case):
    ids, want = VALID[case]
    r, e = _problem(len(want))
    codes = dk.factorize_group_ids(ids, len(want)).codes.tolist()
    assert _same_partition(codes, want), codes
    expected = dk.adjust_rewards(r, e, want, backend="torch")
    assert np.array_equal(dk.adjust_rewards(r, e, ids, backend="torch"), expected)
    assert np.array_equal(distributed.adjust_rewards(r, e, ids), expected)


INVALID = {
    "float": ([0, 1.0, 2], TypeError, r"group_ids\[1\] is a float \(1.0\)"),
    "float NaN": ([0, math.nan, 2], TypeError, r"group_ids\[1\] is a float \(nan\)"),
    "numpy float": ([0, np.float64(2.0), 2], TypeError, r"group_ids\[1\] is a float64"),
    "complex": ([0, 1j, 2], TypeError, r"group_ids\[1\] is a complex"),
    "Decimal": ([0, decimal.Decimal("2"), 2], TypeError, r"group_ids\[1\] is a Decimal"),
    "Fraction": ([0, fractions.Fraction(1, 2), 2], TypeError, r"group_ids\[1\] is a Fraction"),
    "bool": ([0, True, 2], TypeError, r"group_ids\[1\] is a bool \(True\)"),
    "numpy bool": ([0, np.True_, 2], TypeError, r"group_ids\[1\] is a bool"),
    "list": ([0, [1], 2], TypeError, r"group_ids\[1\] is an unhashable list"),
    "dict": ([0, {}, 2], TypeError, r"group_ids\[1\] is an unhashable dict"),
    "set": ([0, {1}, 2], TypeError, r"group_ids\[1\] is an unhashable set"),
    "bytearray": ([0, bytearray(b"x"), 2], TypeError, r"group_ids\[1\] is an unhashable"),
    "tuple with float": ([0, ("p", 1.5), 2], TypeError, r"group_ids\[1\] is a tuple holding a"),
    "frozenset with float": ([0, frozenset({0.5}), 2], TypeError, r"frozenset holding a float"),
    "tuple with bool": ([0, (True,), 2], TypeError, r"a tuple holding a bool"),
    "hash raises": ([0, HashRaises(), 2], TypeError, r"group_ids\[1\] is an unhashable"),
    "== raises": ([0, EqRaises(), 2], TypeError, r"group_ids\[1\] is a EqRaises .* raised"),
    "0-d tensor": ([0, torch.tensor(1), 2], TypeError, r"group_ids\[1\] is a torch.Tensor"),
    "0-d array": ([0, np.array(1), 2], TypeError, r"group_ids\[1\] is a numpy.ndarray"),
    "float array": (np.array([0.0, 1.0, 2.0]), TypeError, "numpy array of dtype float64"),
    "bool array": (np.array([True, False, True]), TypeError, "dtype bool"),
    "complex array": (np.zeros(3, complex), TypeError, "dtype complex128"),
    "structured array": (np.zeros(3, "i4,i4"), TypeError, "group_ids must hold integers"),
    "float tensor": (torch.zeros(3), TypeError, "integer dtype"),
    "bool tensor": (torch.zeros(3, dtype=torch.bool), TypeError, "integer dtype"),
    "complex tensor": (torch.zeros(3, dtype=torch.complex64), TypeError, "integer dtype"),
    "str": ("abc", TypeError, "ordered sequence"),
    "bytes": (b"abc", TypeError, "ordered sequence"),
    "bytearray whole": (bytearray(b"abc"), TypeError, "ordered sequence"),
    "set whole": ({0, 1, 2}, TypeError, "ordered sequence"),
    "frozenset whole": (frozenset({0, 1, 2}), TypeError, "ordered sequence"),
    "dict whole": ({0: 0, 1: 1, 2: 2}, TypeError, "ordered sequence"),
    "dict keys": ({0: 0, 1: 1, 2: 2}.keys(), TypeError, "ordered sequence"),
    "iterator": (iter([0, 1, 2]), TypeError, "ordered sequence"),
    "generator": ((g for g in [0, 1, 2]), TypeError, "ordered sequence"),
    "map": (map(int, "012"), TypeError, "ordered sequence"),
    "scalar": (7, TypeError, "ordered sequence"),
    "None whole": (None, TypeError, "ordered sequence"),
    "2-D list": ([[0, 1], [2, 3], [4, 5]], TypeError, r"group_ids\[0\] is an unhashable list"),
    "2-D array": (np.zeros((3, 1), int), ValueError, "1-D"),
    "0-d array whole": (np.array(3), ValueError, "1-D"),
    "wrong length": ([0, 1], ValueError, "group_ids has 2 entries"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_ids_raise_the_same_error_everywhere(case):
    ids, exc, pattern = INVALID[case]
    messages = {}
    calls = _entry_points(ids, 3)
    if case == "wrong length":  # global_group_codes has no rewards to compare the length with
        del calls["distributed.global_group_codes"]
    for name, call in calls.items():
        with pytest.raises(exc, match=pattern) as info:
            call()
        messages[name] = str(info.value)
    assert len(set(messages.values())) == 1, messages


# ----------------------------------------------------------------------------- properties


def _atoms():
    return st.one_of(
        st.integers(-5, 5),
        st.integers(-(2**70), 2**70),
        st.sampled_from([2**63, -(2**63) - 1, 2**64 - 1, 2**63 - 1, -(2**63)]),
        st.text(alphabet="ab\u00e9\u4e2d", max_size=2),
        st.binary(max_size=2),
        st.none(),
        st.integers(-128, 127).map(np.int8),
        st.integers(0, 2**64 - 1).map(np.uint64),
        st.integers(-(2**63), 2**63 - 1).map(np.int64),
        st.integers(0, 3).map(lambda k: np.datetime64(k, "D")),
        st.sampled_from(list(Colour)),
    )


VALID_IDS = st.recursive(
    _atoms(),
    lambda inner: st.one_of(
        st.tuples(inner), st.tuples(inner, inner), st.frozensets(inner, max_size=2)
    ),
    max_leaves=4,
)

BAD_ATOMS = st.one_of(
    st.floats(allow_nan=True),
    st.sampled_from([math.nan, math.inf, -0.0]),
    st.floats(width=32).map(np.float32),
    st.complex_numbers(),
    st.decimals(allow_nan=True),
    st.fractions(),
    st.booleans(),
    st.just(np.True_),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.integers(), st.integers(), max_size=1),
    st.sets(st.integers(), max_size=1),
    st.just(bytearray(b"x")),
    st.sampled_from([np.datetime64("NaT"), np.timedelta64("NaT")]),
    st.builds(SelfUnequal),
    st.builds(HashRaises),
    st.builds(EqRaises),
    st.integers(0, 3).map(torch.tensor),
    st.integers(0, 3).map(np.array),
)


def _containers(ids: list, draw) -> object:
    """The same ids in one of the containers that may hold them."""
    options = ["list", "tuple", "object array"]
    if ids and all(type(g) is int and -(2**63) <= g < 2**63 for g in ids):
        options += ["int64 array", "int64 tensor"]
    if ids and all(type(g) is str for g in ids):
        options.append("unicode array")
    kind = draw(st.sampled_from(options))
    if kind == "tuple":
        return tuple(ids)
    if kind == "object array":
        array = np.empty(len(ids), dtype=object)
        for i, g in enumerate(ids):
            array[i] = g
        return array
    if kind == "int64 array":
        return np.array(ids, dtype=np.int64)
    if kind == "int64 tensor":
        return torch.tensor(ids, dtype=torch.int64)
    if kind == "unicode array":
        return np.array(ids, dtype=str)
    return list(ids)


@given(data=st.data())
def test_valid_ids_match_a_dict_factorisation(data):
    ids = data.draw(st.lists(VALID_IDS, min_size=0, max_size=12))
    if data.draw(st.booleans()) and ids:  # repeat some ids so that groups have several rows
        ids = ids + data.draw(st.lists(st.sampled_from(ids), max_size=8))
    container = _containers(ids, data.draw)
    want = _reference_codes(ids)
    n = len(ids)
    groups = dk.factorize_group_ids(container, n)
    assert groups.num_groups == len(set(want))
    assert _same_partition(groups.codes.tolist(), want)
    assert _same_partition(distributed.global_group_codes(container).codes.tolist(), want)
    r, e = _problem(n, seed=n)
    expected = dk.dra_advantages(r, e, want, backend="torch")
    assert np.array_equal(dk.dra_advantages(r, e, container, backend="torch"), expected)
    assert np.array_equal(distributed.dra_advantages(r, e, container), expected)


@given(data=st.data())
def test_invalid_ids_raise_type_or_value_errors_naming_group_ids(data):
    ids = data.draw(st.lists(VALID_IDS, min_size=0, max_size=8))
    bad = data.draw(BAD_ATOMS)
    if data.draw(st.booleans()):  # hidden inside a tuple id
        bad = [(bad,), ("p", bad), (0, (bad, 1))][data.draw(st.integers(0, 2))]
    at = data.draw(st.integers(0, len(ids)))
    ids.insert(at, bad)
    container = data.draw(st.sampled_from(["list", "tuple", "object array"]))
    if container == "tuple":
        ids = tuple(ids)
    elif container == "object array":
        array = np.empty(len(ids), dtype=object)
        for i, g in enumerate(ids):
            array[i] = g
        ids = array
    for name, call in _entry_points(ids, len(ids)).items():
        with pytest.raises((TypeError, ValueError), match=rf"group_ids\[{at}\]"):
            call()
        assert name


# ----------------------------------------------------------------------------- the short checks
# Tensors on CPU with integer ids and num_groups skip the general checks (dra_kernels.api
# ._common_call): they must refuse what the general path refuses and agree with it.


def test_the_short_checks_take_common_cpu_calls_for_the_torch_backend():
    e, r, ids = torch.randn(4, 3), torch.randn(4), torch.tensor([0, 0, 1, 1])
    assert api._common_call(r, e, ids, "auto", 2) == "torch"
    assert api._common_call(r, e, ids, "torch", 2) == "torch"
    assert api._common_call(None, e, ids, "auto", 2) == "torch"
    # anything else takes the general checks (and their error messages)
    assert api._common_call(r, e, ids, "auto", None) is None
    assert api._common_call(r, e, ids, "triton", 2) is None
    assert api._common_call(r.requires_grad_(), e, ids, "auto", 2) is None
    assert api._common_call(r.detach(), e, ids.tolist(), "auto", 2) is None
    neg = torch.randn(4, 3, dtype=torch.complex64).conj().imag
    assert neg.is_neg() and api._common_call(r.detach(), neg, ids, "auto", 2) is None
    prepared = api._prepare(r.detach(), e, ids.to(torch.int32), "torch", 2)
    assert prepared.groups.codes.dtype == torch.int64  # one dtype of codes on every path
    assert prepared.backend == "torch"


@pytest.mark.parametrize("bad", [[0, 0, 1, 2], [0, -1, 1, 1]])
def test_the_short_cpu_checks_refuse_codes_out_of_range(bad):
    e, r = torch.randn(4, 3), torch.randn(4)
    ids = torch.tensor(bad)
    assert api._common_call(r, e, ids, "auto", 2) == "torch"
    with pytest.raises(ValueError, match=r"group_ids must lie in \[0, 2\)"):
        dk.adjust_rewards(r, e, ids, num_groups=2)
    with pytest.raises(ValueError, match=r"group_ids must lie in \[0, 2\)"):
        dk.smi_scores(e, ids, num_groups=2)


def test_the_short_cpu_checks_agree_with_the_general_path():
    gen = torch.Generator().manual_seed(0)
    e, r = torch.randn(40, 8, generator=gen), torch.randn(40, generator=gen)
    for dtype in (torch.int32, torch.int64):
        ids = torch.randint(0, 5, (40,), generator=gen).to(dtype)
        out = dk.adjust_rewards(r, e, ids, num_groups=5)
        general = dk.adjust_rewards(r.numpy(), e.numpy(), ids.tolist())  # general checks
        torch.testing.assert_close(out, torch.from_numpy(general))
