"""Hadamard rotations: exact orthonormal matrices, the fast transform, and offline fusion.

A rotated linear layer computes ``y = (W Hᵀ)(H x)``, which equals ``W x`` in exact arithmetic
because ``H`` is orthonormal (``Hᵀ H = I``). The *online* transform ``H x`` spreads an
activation's outliers over all channels before it is quantized (Quamba, Chiang et al. 2024;
QuaRot, Ashkboos et al. 2024); the *offline* part ``W Hᵀ`` is fused into the weight once.

Sizes: ``n = 2^k · m`` where ``m = 1`` (Sylvester) or ``m`` is the order of a Hadamard matrix
built here by Paley's constructions (Paley 1933): construction I gives order ``q + 1`` for a
prime ``q ≡ 3 (mod 4)`` (4, 8, 12, 20, 24, 32, 44, 48, 60, 68, 72, ...), construction II order
``2(q + 1)`` for a prime ``q ≡ 1 (mod 4)`` (12, 28, 36, 60, 76, ...). The full matrix is the
Kronecker product ``H_m ⊗ H_{2^k}``; the transform applies the ``2^k`` part as a fast
Walsh–Hadamard transform (O(n log n)) and the small ``m × m`` part as a matmul.

Convention: ``hadamard_transform(x) == x @ hadamard_matrix(n).T`` on the last dimension (rows are
vectors), normalised so the matrix is orthonormal.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from edgeseq.errors import InputError

# base orders are searched among Paley constructions with primes below this bound
_MAX_PALEY_PRIME = 256


# --------------------------------------------------------------------------------------------
# small Hadamard matrices (Paley constructions)
# --------------------------------------------------------------------------------------------


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q**0.5) + 1))


def _legendre(a: int, q: int) -> int:
    """Quadratic character of ``a`` modulo the odd prime ``q`` (0, 1 or -1)."""
    a %= q
    if a == 0:
        return 0
    return 1 if pow(a, (q - 1) // 2, q) == 1 else -1


def _jacobsthal(q: int) -> Tensor:
    """``Q[i, j] = χ(j - i)`` over GF(q) (antisymmetric for q ≡ 3 mod 4, symmetric for q ≡ 1)."""
    chi = torch.tensor([_legendre(a, q) for a in range(q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def paley1(q: int) -> Tensor:
    """Paley construction I: a Hadamard matrix of order ``q + 1`` for a prime ``q ≡ 3 (mod 4)``."""
    if not (_is_prime(q) and q % 4 == 3):
        raise ValueError(f"Paley I needs a prime q ≡ 3 (mod 4), got {q}")
    n = q + 1
    S = torch.zeros(n, n, dtype=torch.float64)
    S[0, 1:] = 1.0
    S[1:, 0] = -1.0
    S[1:, 1:] = _jacobsthal(q)
    return torch.eye(n, dtype=torch.float64) + S


def paley2(q: int) -> Tensor:
    """Paley construction II: a Hadamard matrix of order ``2(q + 1)`` for a prime ``q ≡ 1 (mod 4)``."""
    if not (_is_prime(q) and q % 4 == 1):
        raise ValueError(f"Paley II needs a prime q ≡ 1 (mod 4), got {q}")
    n = q + 1
    C = torch.zeros(n, n, dtype=torch.float64)
    C[0, 1:] = 1.0
    C[1:, 0] = 1.0
    C[1:, 1:] = _jacobsthal(q)
    zero_block = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    sign_block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    # each entry c becomes a 2x2 block: c·sign_block where c = ±1, zero_block where c = 0
    H = torch.kron(C, sign_block) + torch.kron((C == 0).double(), zero_block)
    return H


@lru_cache(maxsize=None)
def _base_orders() -> dict[int, tuple[str, int]]:
    """Orders m (not powers of two) we can build: m -> (construction, q)."""
    orders: dict[int, tuple[str, int]] = {}
    for q in range(3, _MAX_PALEY_PRIME):
        if not _is_prime(q):
            continue
        if q % 4 == 3:
            orders.setdefault(q + 1, ("paley1", q))
        else:
            orders.setdefault(2 * (q + 1), ("paley2", q))
    return {m: v for m, v in orders.items() if m & (m - 1)}  # powers of two come from Sylvester


@lru_cache(maxsize=None)
def _base_matrix(m: int) -> Tensor:
    """The unnormalised ±1 Hadamard matrix of base order ``m`` (float64)."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    kind, q = _base_orders()[m]
    return paley1(q) if kind == "paley1" else paley2(q)


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@lru_cache(maxsize=None)
def hadamard_factors(n: int) -> tuple[int, int]:
    """``(m, p)`` with ``n = m · p``, ``p`` a power of two and ``m`` a base order (smallest m first).

    Raises InputError when no supported factorisation exists.
    """
    if not isinstance(n, int) or n < 1:
        raise InputError(f"Hadamard size must be a positive integer, got {n!r}")
    if _is_power_of_two(n):
        return 1, n
    for m in sorted(_base_orders()):
        if n % m == 0 and _is_power_of_two(n // m):
            return m, n // m
    raise InputError(
        f"no Hadamard matrix of size {n}: supported sizes are 2^k·m with m = 1 or a Paley order "
        f"({', '.join(map(str, sorted(_base_orders())[:8]))}, ...); turn rotation off for this layer "
        f"(recipe rotate = false)"
    )


def supports_hadamard(n: int) -> bool:
    try:
        hadamard_factors(n)
    except InputError:
        return False
    return True


def hadamard_matrix(n: int, normalized: bool = True, dtype: torch.dtype = torch.float64) -> Tensor:
    """Hadamard matrix of order ``n = 2^k · m``: ``H_m ⊗ H_{2^k}`` (Sylvester), orthonormal by default."""
    m, p = hadamard_factors(n)
    sylvester = torch.ones(1, 1, dtype=torch.float64)
    block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while sylvester.shape[0] < p:
        sylvester = torch.kron(block, sylvester)
    H = torch.kron(_base_matrix(m), sylvester)
    if normalized:
        H = H / math.sqrt(n)
    return H.to(dtype)


# --------------------------------------------------------------------------------------------
# the transform
# --------------------------------------------------------------------------------------------


def fwht(x: Tensor) -> Tensor:
    """Unnormalised fast Walsh–Hadamard transform on the last dimension (a power of two).

    ``fwht(x) == x @ H_p`` for the Sylvester matrix ``H_p`` (symmetric). Static reshapes only, so
    it traces to ONNX (``log2(p)`` stages of reshape/add/sub/concat).
    """
    p = int(x.shape[-1])
    if not _is_power_of_two(p):
        raise InputError(f"fwht needs a power-of-two last dimension, got {p}")
    lead = x.shape[:-1]
    y = x.reshape(-1, p)
    h = 1
    while h < p:
        y = y.reshape(-1, p // (2 * h), 2, h)
        first, second = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((first + second, first - second), dim=2)
        h *= 2
    return y.reshape(*lead, p)


def hadamard_transform_matmul(x: Tensor) -> Tensor:
    """:func:`hadamard_transform` as two small matrix products (for exported graphs).

    With ``n = m · p``, ``H_n = H_m ⊗ H_p``: the vector reshaped to ``[m, p]`` is multiplied by
    the normalised ``H_p`` on the right and the normalised ``H_m`` on the left — one or two
    ``MatMul`` kernels with ``p × p`` and ``m × m`` constants (64 KiB for ``p = 128``) instead of
    the butterflies' ``log2(p)`` rounds of slice/stack ops. Equal to the FWHT up to float rounding.
    """
    n = int(x.shape[-1])
    m, p = hadamard_factors(n)
    y = x.reshape(-1, m, p)
    y = torch.matmul(y, hadamard_matrix(p, dtype=x.dtype).to(x.device))
    if m > 1:
        base = (_base_matrix(m) / math.sqrt(m)).to(dtype=x.dtype, device=x.device)
        y = torch.matmul(base, y)
    # the leading dims but the first as constants: a traced graph reshapes by a stored shape
    # instead of Shape/Gather/Unsqueeze/Concat on every step (only the batch stays symbolic)
    return y.reshape(-1, *[int(d) for d in x.shape[1:-1]], n) if x.dim() > 1 else y.reshape(n)


def hadamard_transform(x: Tensor) -> Tensor:
    """Orthonormal Hadamard transform of the last dimension: ``x @ hadamard_matrix(n).T``.

    Works for any batch shape and any supported size ``n = m · 2^k`` (FWHT on the ``2^k`` part,
    a small ``m × m`` matmul on the other); cost O(n (log n + m)). Traceable for ONNX export.
    """
    n = int(x.shape[-1])
    m, p = hadamard_factors(n)
    lead = x.shape[:-1]
    y = fwht(x.reshape(-1, m, p))  # [N, m, p] @ H_p
    if m > 1:
        base = _base_matrix(m).to(dtype=x.dtype, device=x.device)
        y = torch.matmul(base, y)  # H_m @ [N, m, p]
    return (y * (1.0 / math.sqrt(n))).reshape(*lead, n)


def fuse_rotation(weight: Tensor) -> Tensor:
    """The offline half of a rotation: ``W Hᵀ`` for a weight ``[out, in]``, computed in float64.

    Then ``linear(hadamard_transform(x), fuse_rotation(W)) == linear(x, W)`` up to rounding.
    """
    if weight.dim() != 2:
        raise InputError(f"rotation fuses into 2-D linear weights, got shape {tuple(weight.shape)}")
    return hadamard_transform(weight.detach().double()).to(weight.dtype)


__all__ = [
    "fuse_rotation",
    "fwht",
    "hadamard_factors",
    "hadamard_matrix",
    "hadamard_transform",
    "paley1",
    "paley2",
    "supports_hadamard",
]
