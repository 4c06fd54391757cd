"""binary, ternary and codebook<k>: levels fitted to the tensor, against exact Fraction references.

The references sum with `fractions.Fraction` element by element and round with their own
round-half-even; they never call lowbit.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import lowbit as lb
from lowbit.formats import BinaryFormat, Codebook, TernaryFormat, format_card
from lowbit.formats.learned import exact_sums

# dtype -> (fraction bits, smallest normal exponent) of the precision levels are fitted in
PRECISION = {torch.float16: (10, -14), torch.bfloat16: (7, -126), torch.float32: (23, -126), torch.float64: (52, -1022)}
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def param_dtype(dtype: torch.dtype) -> torch.dtype:
    """Fitted parameters are stored in float64 for float64 inputs, float32 for the others."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def round_half_even_to(q: Fraction, dtype: torch.dtype) -> float:
    """q rounded once, to nearest even, into the precision of ``dtype``."""
    if q == 0:
        return 0.0
    man, emin = PRECISION[dtype]
    a = abs(q)
    e = math.frexp(float(a))[1] - 1  # float(a) may round up into the next binade: fix below
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    quantum = Fraction(2) ** (max(e, emin) - man)
    k = math.floor(a / quantum)
    rem = a / quantum - k
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and k % 2 == 1):
        k += 1
    return math.copysign(float(k * quantum), q)


def exact_mean(values: "list[float]") -> Fraction:
    return sum((Fraction(v) for v in values), Fraction(0)) / len(values)


def sample(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * torch.exp2(torch.randint(-3, 4, (n,), generator=g)).double()
    x[:3] = torch.tensor([0.0, -0.0, 1e-3])[:n]
    return x.to(dtype)


# ------------------------------------------------------------------ binary
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(257,), (4, 9, 7), (1,), (2,)])
def test_binary_is_exactly_sign_times_the_mean_magnitude(dtype, shape):
    x = sample(math.prod(shape), seed=1, dtype=dtype).reshape(shape)
    s = round_half_even_to(exact_mean([abs(v) for v in x.double().reshape(-1).tolist()]), dtype)
    s64 = torch.tensor(s, dtype=torch.float64)
    expected = torch.where(x < 0, -s64, s64)  # sign(0) = sign(-0) = +
    q = lb.parse_format("binary").quantize(x)
    assert q.dtype == dtype and q.shape == x.shape
    assert torch.equal(q.double(), expected) and not torch.signbit(q[x == 0]).any()
    enc = lb.parse_format("binary").encode_tensor(x)
    assert torch.equal(enc.codes, (x < 0).to(torch.uint8))
    assert enc.params["scale"].dtype == param_dtype(dtype) and enc.params["scale"].item() == s
    assert torch.equal(enc.decode(dtype), q)


def test_binary_hand_worked():
    q = BinaryFormat().quantize(torch.tensor([0.5, -1.0, 0.0, 2.5]))  # mean|x| = 1
    assert q.tolist() == [1.0, -1.0, 1.0, 1.0]


# ------------------------------------------------------------------ ternary
def ternary_reference(x: torch.Tensor) -> "tuple[float, list[int]]":
    vals = x.double().reshape(-1).tolist()
    delta = Fraction(7, 10) * exact_mean([abs(v) for v in vals])
    big = [abs(Fraction(v)) > delta for v in vals]
    kept = [abs(v) for v, b in zip(vals, big) if b]
    alpha = round_half_even_to(exact_mean(kept), x.dtype) if kept else 0.0
    return alpha, [0 if not b else (3 if v < 0 else 1) for v, b in zip(vals, big)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ternary_follows_the_threshold_rule_exactly(dtype, seed):
    x = sample(300, seed=seed, dtype=dtype).reshape(3, 100)
    alpha, codes = ternary_reference(x)
    enc = lb.parse_format("ternary").encode_tensor(x)
    assert enc.codes.reshape(-1).tolist() == codes
    assert enc.params["scale"].item() == alpha
    levels = {0: 0.0, 1: alpha, 3: -alpha}
    expected = torch.tensor([levels[c] for c in codes], dtype=torch.float64).reshape(x.shape)
    q = lb.parse_format("ternary").quantize(x)
    assert q.dtype == dtype and torch.equal(q.double(), expected)


def test_ternary_threshold_is_compared_exactly():
    # mean|x| = 1, so Δ = 0.7 exactly (not the float 0.7 = 0.6999999999999999555...)
    x = torch.tensor([0.7, -0.7, 1.6, 1.0], dtype=torch.float64)
    assert TernaryFormat().threshold(x) == Fraction(7, 10)
    # float64 0.7 is below 7/10, so 0.7 stays 0; α = (1.6 + 1.0) / 2, rounded once to float64
    q = TernaryFormat().quantize(x)
    a = round_half_even_to((Fraction(1.6) + Fraction(1.0)) / 2, torch.float64)
    assert q.tolist() == [0.0, 0.0, a, a] and a != float(torch.tensor(a, dtype=torch.float32))
    hand = TernaryFormat().quantize(torch.tensor([0.1, -2.0, 1.0, 0.9]))
    assert hand.tolist() == [0.0, -1.2999999523162842, 1.2999999523162842, 1.2999999523162842]


# ------------------------------------------------------------------ codebook
def sse(x: torch.Tensor, q: torch.Tensor) -> float:
    return float(((x.double() - q.double()) ** 2).sum())


def linear_init_sse(x: torch.Tensor, k: int) -> float:
    v = x.double().reshape(-1)
    lo, hi, K = float(v.min()), float(v.max()), 1 << k
    grid = torch.tensor([lo + (hi - lo) * i / (K - 1) for i in range(K)], dtype=torch.float64)
    nearest = grid[torch.argmin((v[:, None] - grid[None, :]).abs(), dim=1)]
    return sse(v, nearest)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_codebook_levels_are_cluster_means_and_beat_the_linear_grid(k, dtype):
    x = sample(2000, seed=k, dtype=dtype).reshape(40, 50)
    fmt = lb.parse_format(f"codebook{k}")
    enc = fmt.encode_tensor(x)
    levels = enc.params["levels"]
    assert levels.dtype == param_dtype(dtype) and levels.shape == (1 << k,)
    assert torch.isfinite(levels).all() and torch.equal(levels, torch.sort(levels).values)
    q = fmt.quantize(x)
    assert q.dtype == dtype and q.shape == x.shape and torch.equal(enc.decode(dtype), q)
    assert q.unique().numel() <= 1 << k
    flat, codes = x.double().reshape(-1).tolist(), enc.codes.reshape(-1).tolist()
    for c in set(codes):
        members = [v for v, cc in zip(flat, codes) if cc == c]
        assert levels[c].item() == round_half_even_to(exact_mean(members), dtype), f"level {c}"
    assert sse(x, q) <= linear_init_sse(x, k)
    assert torch.equal(fmt.quantize(x), q)  # deterministic


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(6))
def test_codebook_reproduces_a_tensor_with_at_most_2_to_the_k_distinct_values(k, seed):
    g = torch.Generator().manual_seed(100 * k + seed)
    distinct = int(torch.randint(1, (1 << k) + 1, (1,), generator=g))
    values = torch.randn(distinct, generator=g) * torch.exp(torch.randn(distinct, generator=g) * 2)
    index = torch.randint(0, distinct, (300,), generator=g)
    index[:distinct] = torch.arange(distinct)
    x = values[index]
    enc = Codebook(k).encode_tensor(x)
    assert torch.equal(enc.decode(), x)
    used = int(enc.codes.max()) + 1
    assert used == x.unique().numel()
    assert (enc.params["levels"][used:] == enc.params["levels"][used - 1]).all()  # padding repeats the top level


def test_codebook_hand_worked():
    x = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.5, 9.0])
    assert Codebook(1).quantize(x).tolist() == [float(torch.tensor(0.1))] * 3 + [6.5] * 3
    assert torch.equal(Codebook(3).quantize(x), x)
    assert Codebook(2).quantize(torch.full((5,), -2.5)).tolist() == [-2.5] * 5


def test_float64_inputs_are_never_pushed_through_float32():
    # the fitted levels of a float64 tensor are its exact means rounded once to float64
    x = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    assert torch.equal(Codebook(2).quantize(x), x)  # 4 values, 4 levels: exact, not float32 neighbours
    assert Codebook(2).encode_tensor(x).params["levels"].dtype == torch.float64
    y = torch.tensor([1.1, -1.3], dtype=torch.float64)
    s = round_half_even_to((Fraction(1.1) + Fraction(1.3)) / 2, torch.float64)
    assert lb.parse_format("binary").quantize(y).tolist() == [s, -s]
    assert lb.parse_format("ternary").quantize(y).tolist() == [s, -s]
    big = torch.tensor([1e300, 2e300], dtype=torch.float64)  # beyond float32's range: fine in float64
    assert torch.equal(Codebook(1).quantize(big), big)


@pytest.mark.parametrize("k, n, dtype", [(5, 50_000, torch.float32), (8, 20_000, torch.float32),
                                         (3, 200_000, torch.float32), (4, 5_000, torch.bfloat16),
                                         (6, 5_000, torch.float16)])
def test_codebook_is_a_k_means_fixed_point_on_heavy_tailed_data(k, n, dtype):
    # x³ of a normal sample: Lloyd's iterations converge slowly there (300 steps used to stop early,
    # leaving values with a nearer level than their own); in bfloat16 / float16 the levels' rounding
    # moves values across midpoints. Invariants, in the stored levels: every value's level is its
    # nearest (a tie to the lower one), every used level the exact mean of its values, rounded once
    g = torch.Generator().manual_seed(k)
    x = (torch.randn(n, generator=g) ** 3).to(dtype)
    enc = Codebook(k).encode_tensor(x)
    levels, codes = enc.params["levels"].double(), enc.codes.long()
    used = codes.unique()
    lv = levels[used]
    dist = (x.double()[:, None] - lv[None, :]).abs()
    nearest = used[torch.argmin(dist, dim=1)]  # argmin: first minimum = the lower level on a tie
    assert torch.equal(codes, nearest)
    sums = exact_sums(x.double(), codes, levels.numel())
    counts = torch.bincount(codes, minlength=levels.numel()).tolist()
    for c in used.tolist():
        assert levels[c].item() == round_half_even_to(sums[c] / counts[c], dtype), c


# ------------------------------------------------------------------ shared behaviour
LEARNED = ["binary", "ternary", "codebook1", "codebook4", "codebook8"]


@pytest.mark.parametrize("spec", LEARNED)
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_zero_and_empty_tensors_give_zeros_without_nan(spec, dtype):
    fmt = lb.parse_format(spec)
    for shape in [(5, 3), (0,), (2, 0)]:
        q = fmt.quantize(torch.zeros(shape, dtype=dtype))
        assert q.shape == shape and q.dtype == dtype and not torch.isnan(q).any() and (q == 0).all()
        enc = fmt.encode_tensor(torch.zeros(shape, dtype=dtype))
        assert all(torch.isfinite(p).all() for p in enc.params.values())


@pytest.mark.parametrize("spec", LEARNED)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_inputs_raise_value_error(spec, bad):
    x = torch.randn(10)
    x[3] = bad
    with pytest.raises(ValueError, match="NaN or ±inf"):
        lb.parse_format(spec).quantize(x)


@pytest.mark.parametrize("spec", LEARNED)
@pytest.mark.parametrize("rounding", ["stochastic", "floor", "nearest_away", "sideways"])
def test_rounding_other_than_nearest_even_raises_naming_the_argument(spec, rounding):
    with pytest.raises(ValueError, match=f"rounding='{rounding}'.*allowed: 'nearest_even'"):
        lb.parse_format(spec).quantize(torch.randn(10), rounding, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("spec", LEARNED)
def test_out_and_in_place(spec):
    fmt = lb.parse_format(spec)
    x = sample(64, seed=9).reshape(8, 8)
    q = fmt.quantize(x)
    out = torch.empty_like(x)
    assert fmt.quantize(x, out=out) is out and torch.equal(out, q)
    fmt.quantize(x, out=x)
    assert torch.equal(x, q)


@pytest.mark.parametrize("spec", ["binary", "ternary"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_and_ternary_are_idempotent(spec, dtype):
    fmt = lb.parse_format(spec)
    q = fmt.quantize(sample(500, seed=4, dtype=dtype))
    assert torch.equal(fmt.quantize(q), q)


@pytest.mark.parametrize(
    "spec,bits,family",
    [("binary", 1, "binary"), ("ternary", 2, "ternary"), ("codebook1", 1, "codebook"), ("codebook8", 8, "codebook")],
)
def test_specs_facts_and_cards(spec, bits, family):
    fmt = lb.parse_format(spec)
    assert str(fmt) == spec and lb.parse_format(str(fmt)) == fmt and hash(lb.parse_format(spec)) == hash(fmt)
    assert eval(repr(fmt), {"parse_format": lb.parse_format}) == fmt
    assert fmt.bits == bits and fmt.family == family and fmt.data_dependent
    card = format_card(fmt)
    assert card["bits"] == bits and card == fmt.card() and card["data_dependent"] is True
    assert lb.parse_format(spec.upper()) == fmt


@pytest.mark.parametrize(
    "bad,needle", [("codebook0", "1..8"), ("codebook9", "1..8"), ("codebook", "codebook4"), ("tenary", "ternary")]
)
def test_bad_specs_raise_format_spec_error_naming_the_valid_forms(bad, needle):
    with pytest.raises(lb.FormatSpecError) as err:
        lb.parse_format(bad)
    assert needle in str(err.value) and "codebook<k>" in str(err.value)


def test_decode_tensor_checks_codes_and_params():
    fmt = lb.parse_format("ternary")
    enc = fmt.encode_tensor(torch.randn(6))
    with pytest.raises(ValueError, match=r"\{0, 1, 3\}"):
        fmt.decode_tensor(lb.EncodedTensor(fmt, torch.full((6,), 2, dtype=torch.uint8), enc.params))
    with pytest.raises(ValueError, match="'scale'"):
        fmt.decode_tensor(lb.EncodedTensor(fmt, enc.codes, {}))
    with pytest.raises(ValueError, match="binary"):
        lb.parse_format("binary").decode_tensor(enc)
    cb = lb.parse_format("codebook2")
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        cb.decode_tensor(lb.EncodedTensor(cb, torch.zeros(3, dtype=torch.uint8), {"levels": torch.zeros(3)}))


def test_fake_quantize_with_a_learned_format():
    x = torch.randn(16, requires_grad=True)
    y = lb.fake_quantize(x, "ternary")
    assert torch.equal(y.detach(), lb.parse_format("ternary").quantize(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


# ---------------------------------------------------------------------- fitted per channel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_binary_per_channel_is_sign_times_each_rows_mean_magnitude(dtype):
    x = sample(5 * 12, 7, dtype).reshape(5, 3, 4)
    got = BinaryFormat().quantize_channels(x)
    for c in range(5):
        row = [float(v) for v in x[c].reshape(-1).to(torch.float64)]
        s = round_half_even_to(exact_mean([abs(v) for v in row]), dtype)
        assert got[c].reshape(-1).tolist() == [(-s if v < 0 else s) for v in row], c


@pytest.mark.parametrize("spec", ["ternary", "codebook2", "codebook4"])
def test_per_channel_fit_equals_fitting_each_channel_alone(spec):
    fmt = lb.parse_format(spec)
    x = sample(6 * 40, 3).reshape(6, 40)
    x[2] = 0.0  # an all-zero channel: zeros, no NaN
    enc = fmt.encode_channels(x)
    for c in range(6):
        alone = fmt.encode_tensor(x[c])
        assert torch.equal(enc.codes[c], alone.codes), c
        for k, v in alone.params.items():
            assert torch.equal(enc.params[k][c], v), (c, k)
    got = fmt.decode_tensor(enc)
    want = torch.stack([fmt.quantize(x[c]) for c in range(6)])
    assert torch.equal(got, want) and torch.equal(fmt.quantize_channels(x), want)
    assert torch.equal(got[2], torch.zeros(40))
    assert fmt.per_channel(enc) and not fmt.per_channel(fmt.encode_tensor(x))


def test_per_channel_params_must_match_the_channels():
    fmt = Codebook(2)
    enc = fmt.encode_channels(torch.randn(3, 8))
    bad = lb.EncodedTensor(fmt, enc.codes[:2], dict(enc.params))
    with pytest.raises(ValueError, match=r"one entry per channel or group: leading dimension 2"):
        fmt.decode_tensor(bad)
    with pytest.raises(ValueError, match="at least one dimension"):
        fmt.encode_channels(torch.tensor(1.0))


@pytest.mark.parametrize("spec", ["binary", "ternary", "codebook1", "codebook2", "codebook3", "codebook4", "codebook8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fitting_all_rows_at_once_equals_fitting_each_row_alone(spec, dtype):
    # binary and ternary fit every channel / group in one pass (exact grouped sums), codebooks run
    # Lloyd's iterations for all rows in one numba kernel (when installed); each row must
    # get exactly the codes and parameters of `encode_tensor` on that row alone, including rows of
    # zeros, a row whose values sit exactly on the ternary threshold 0.7 * mean|x|, tiny and large
    # magnitudes, and a single-element row
    fmt = lb.parse_format(spec)
    rows = [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.7, 1.0, -1.0, 0.0, 0.7, -0.7],        # mean|x| = 4.1 / 6: values next to the threshold
        [1.0, 1.0, 1.0, -1.0, 0.35, 0.35],
        [1e-30, -3e-30, 2e-31, 5e-30, 0.0, -1e-31],
        [3e30, -1e30, 2e29, 7e30, -5e30, 1.0],
        [-2.5, 2.5, -2.5, 2.5, 0.1, -0.1],
        [1.0, 1.0, 1.0, 2.0, 2.0, 3.0],          # fewer distinct values than levels: reseeding
    ]
    if dtype == torch.float64:  # a value equal to float(Δ) where float(Δ) > Δ: it must stay below the threshold
        rows.append([-0.38026345019834284, 1.1351943561390905, -0.7867490956842902, -0.09361218339057675,
                     0.3335281578201248, 0.3604798245778675])
        if spec == "ternary":
            delta = TernaryFormat().threshold(torch.tensor(rows[-1], dtype=torch.float64))
            assert Fraction(rows[-1][-1]) > delta and float(delta) == rows[-1][-1]
    x = torch.tensor(rows, dtype=torch.float64).to(dtype)
    for axis, group_size in ((0, None), (1, 2), (1, 1)):
        enc = fmt.encode_channels(x, axis=axis, group_size=group_size)
        if group_size is None:
            slices = [x[r] for r in range(x.shape[0])]
        else:
            slices = [x[r, j:j + group_size] for r in range(x.shape[0]) for j in range(0, x.shape[1], group_size)]
        alone = [fmt.encode_tensor(s.contiguous()) for s in slices]
        codes = torch.cat([a.codes.reshape(-1) for a in alone])
        assert torch.equal(enc.codes.reshape(-1), codes), (axis, group_size)
        for k in alone[0].params:
            want = torch.stack([a.params[k] for a in alone])
            assert torch.equal(enc.params[k].reshape(want.shape), want), (axis, group_size, k)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_codebook_rows_at_once_equal_each_row_alone_on_random_data(k):
    # Lloyd's iterations of the batched kernel follow `Codebook._fit` step for step: random rows of
    # several lengths and spreads (duplicates, long tails, constant rows) give identical codes and levels
    fmt = Codebook(k)
    gen = torch.Generator().manual_seed(k)
    for n in (1, 2, 3, 17, 64, 300):
        x = torch.randn(24, n, generator=gen, dtype=torch.float64)
        x[0] = 0.5                                            # constant row
        x[1] = torch.round(x[1] * 2) / 2                      # many duplicates
        x[2] = x[2] ** 3 * 100                                # long tails
        x = x * torch.exp2(torch.randint(-20, 20, (24, 1), generator=gen)).to(torch.float64)
        enc = fmt.encode_channels(x)
        alone = [fmt.encode_tensor(x[r]) for r in range(x.shape[0])]
        assert torch.equal(enc.codes, torch.stack([a.codes for a in alone])), n
        assert torch.equal(enc.params["levels"], torch.stack([a.params["levels"] for a in alone])), n
        with lb.kernels.use_backend("reference"):  # without the kernel: one `_fit` per row, the same result
            ref = fmt.encode_channels(x)
        assert torch.equal(ref.codes, enc.codes) and torch.equal(ref.params["levels"], enc.params["levels"]), n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_codebook_rows_fitted_at_once_settle_as_each_row_alone(dtype):
    # the batched fit (numba Lloyd kernel + one grouped exact sum) finishes every row exactly as
    # `_fit` does; in bfloat16 / float16 that final step moves values in many rows
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(40, 300, generator=g) ** 3).to(dtype)
    fmt = Codebook(4)
    enc = fmt.encode_channels(x)
    alone = [fmt.encode_tensor(x[r]) for r in range(x.shape[0])]
    assert torch.equal(enc.codes, torch.stack([a.codes for a in alone]))
    assert torch.equal(enc.params["levels"], torch.stack([a.params["levels"] for a in alone]))
