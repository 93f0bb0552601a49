"""Hadamard utilities: exact orthogonality, FWHT = matrix product, exact fusion in float."""

import pytest
import torch

from edgeseq.errors import InputError
from quantize.hadamard import (
    _base_orders,
    fuse_rotation,
    fwht,
    hadamard_factors,
    hadamard_matrix,
    hadamard_transform,
    paley1,
    paley2,
    supports_hadamard,
)

BASE_ORDERS = sorted(_base_orders())[:12]  # 12, 20, 24, 28, 36, 44, ...
SIZES = [1, 2, 4, 8, 64, 256] + BASE_ORDERS + [12 * 2, 12 * 8, 20 * 4, 28 * 2, 36 * 4, 1536]


@pytest.mark.parametrize("n", SIZES)
def test_matrix_is_orthonormal_and_pm1(n):
    H = hadamard_matrix(n)
    assert torch.allclose(H @ H.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    raw = hadamard_matrix(n, normalized=False)
    assert set(raw.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("q", [3, 7, 11, 19, 23, 31, 43])
def test_paley1_orders(q):
    H = paley1(q)
    assert torch.equal(H @ H.T, (q + 1) * torch.eye(q + 1, dtype=torch.float64))


@pytest.mark.parametrize("q", [5, 13, 17, 29, 37])
def test_paley2_orders(q):
    H = paley2(q)
    n = 2 * (q + 1)
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))


def test_mamba_sizes_supported():
    # d_inner of mamba-130m/790m (1536, 3072 = 2^k·12) and 2.8b (5120 = 2^8·20)
    assert hadamard_factors(1536) == (12, 128)
    assert hadamard_factors(3072) == (12, 256)
    assert hadamard_factors(5120) == (20, 256)
    assert not supports_hadamard(2 * 7 * 11)


@pytest.mark.parametrize("n", [1, 2, 16, 128])
def test_fwht_equals_sylvester_product(n):
    x = torch.randn(3, 5, n, dtype=torch.float64)
    H = hadamard_matrix(n, normalized=False)
    assert torch.allclose(fwht(x), x @ H, atol=1e-10)


@pytest.mark.parametrize("n", [16, 12, 40, 56, 96, 1536])
def test_transform_equals_matrix_product_any_batch_shape(n):
    H = hadamard_matrix(n)
    for shape in [(n,), (4, n), (2, 3, n)]:
        x = torch.randn(*shape, dtype=torch.float64)
        assert torch.allclose(hadamard_transform(x), x @ H.T, atol=1e-10)
    # orthonormal: the transform preserves norms and H(Hᵀ-inverse) round-trips
    x = torch.randn(7, n, dtype=torch.float64)
    assert torch.allclose(hadamard_transform(x).norm(dim=-1), x.norm(dim=-1))
    assert torch.allclose(hadamard_transform(x) @ H, x, atol=1e-10)


@pytest.mark.parametrize("n", [64, 96])
def test_fused_rotation_is_exact_in_float32(n):
    """(W Hᵀ)(H x) = W x: float32 tolerance — two O(n) reductions of unit-scale values, so the
    difference is a few float32 ulps of |y| (<= 1e-5 for n <= 96)."""
    linear = torch.nn.Linear(n, 32)
    x = torch.randn(10, n)
    y = linear(x)
    y_rot = torch.nn.functional.linear(hadamard_transform(x), fuse_rotation(linear.weight), linear.bias)
    assert torch.allclose(y_rot, y, atol=1e-5, rtol=1e-5)


def test_unsupported_size_is_a_clear_error():
    with pytest.raises(InputError, match="no Hadamard matrix of size 154"):
        hadamard_transform(torch.randn(2, 154))


def test_transform_traces_to_onnx_friendly_ops():
    traced = torch.jit.trace(hadamard_transform, torch.randn(2, 24))
    x = torch.randn(5, 24)
    assert torch.allclose(traced(x), hadamard_transform(x))


@pytest.mark.parametrize("n", [16, 12, 48, 768, 1536])
def test_matmul_form_equals_the_fast_transform(n):
    """The exported form (H_m ⊗ H_p as two MatMuls) is the same orthonormal transform."""
    from quantize.hadamard import hadamard_transform_matmul

    x = torch.randn(3, 5, n, generator=torch.Generator().manual_seed(n))
    expected = x.double() @ hadamard_matrix(n).T
    torch.testing.assert_close(hadamard_transform_matmul(x).double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hadamard_transform_matmul(x), hadamard_transform(x), rtol=1e-5, atol=1e-5)
