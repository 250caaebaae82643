"""HiPPO-LegS initialisation of the diagonal ConvS5 / S5 state matrix (numpy, float64).

    eigenvalues, eigenvectors = diagonal_hippo(P)    # complex [P / 2], complex [P, P / 2]

HiPPO-LegS, the P x P matrix A (n, k = 0 .. P-1):

    A[n, k] = -sqrt(2n + 1) sqrt(2k + 1)   if n > k
              -(n + 1)                     if n = k
              0                            if n < k

A is not normal, but adding the rank-one term p p^T (p_n = sqrt(n + 1/2)) makes it so:
S = A + p p^T = -1/2 I + K with K real skew-symmetric. S = V diag(Λ) V^H with V unitary and
Λ = -1/2 + i ω, ω the eigenvalues of the Hermitian -i K; they come in pairs ±ω (P even).
S5 and ConvS5 use this diagonal part: one eigenvalue of each conjugate pair (ω < 0, eigh's
first P / 2) with its eigenvector, so a real input and output matrix B, C (P channels) become
the complex B̃ = V^H B and C̃ = C V (P / 2 channels), and the system's output is 2 Re(C̃ x).
"""

from __future__ import annotations

import functools

import numpy as np


def hippo_legs(size: int) -> np.ndarray:
    """The HiPPO-LegS state matrix A, float64 [size, size] (lower triangular)."""
    root = np.sqrt(2 * np.arange(size) + 1.0)
    return -(np.tril(root[:, None] * root[None, :]) - np.diag(np.arange(size)))


def normal_hippo(size: int) -> np.ndarray:
    """S = A + p p^T (p_n = sqrt(n + 1/2)), the normal part of HiPPO-LegS, float64."""
    low_rank = np.sqrt(np.arange(size) + 0.5)
    return hippo_legs(size) + low_rank[:, None] * low_rank[None, :]


@functools.cache
def diagonal_hippo(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Half the spectrum of `normal_hippo(size)`: eigenvalues complex128 [size / 2] (real part
    -1/2, imaginary part < 0) and their orthonormal eigenvectors complex128 [size, size / 2].
    The rest of the spectrum is their complex conjugate."""
    if size < 2 or size % 2:
        raise ValueError(f"the HiPPO state size must be even and >= 2 (conjugate pairs); "
                         f"got {size}")
    normal = normal_hippo(size)
    skew = normal - np.diag(np.diag(normal))
    frequencies, vectors = np.linalg.eigh(-1j * skew)  # ascending: the negative half first
    half = size // 2
    return -0.5 + 1j * frequencies[:half], vectors[:, :half]
