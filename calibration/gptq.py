"""GPTQ (Frantar et al. 2022) rounding for int4 block-quantised weights.

Round-to-nearest makes each weight's error independently. GPTQ rounds the contracted axis one
input channel at a time and moves each channel's rounding error onto the channels not yet rounded,
weighted by the inverse of the input's second moment H = XᵀX / n, so the layer's output error
‖X·Q(W) − X·W‖ is what is minimised, not the weights' own. Each block's scale is chosen when the
rounding reaches the block, from the weights as the earlier errors have left them: among
max|w| / c for c in CLIP_DIVISORS (c = 7: no clipping; c = 8: the largest negative weight lands on
−8 exactly; larger c clip), the one with the least importance-weighted error Σ H_jj (w_j − q_j)².

X is a bounded sample of the weight's input rows (calibration/awq.py's reservoir), so H may be
rank-deficient when the sample has fewer rows than channels: DAMPING × mean(diag H) on the
diagonal keeps it invertible, as in the paper. Inputs channels never active (H_jj = 0) are rounded
with no error to pass on.
"""

from __future__ import annotations

import numpy as np

INT4_MIN, INT4_MAX = -8, 7
CLIP_DIVISORS = tuple(7.0 + 0.25 * i for i in range(13))  # 7 … 10
DAMPING = 0.01
LAZY_ROWS = 128  # rows rounded before the trailing weights get their batched update


def block_scale(w: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """Per column of w [bs, N]: the scale among max|w| / CLIP_DIVISORS with the least
    Σ_j importance_j (w_j − s·clip(round(w_j / s)))²."""
    amax = np.abs(w).max(axis=0)
    amax = np.where(amax > 0, amax, 1.0)
    best_scale = amax / CLIP_DIVISORS[0]
    best_error = np.full(w.shape[1], np.inf)
    for c in CLIP_DIVISORS:
        scale = amax / c
        q = np.clip(np.rint(w / scale), INT4_MIN, INT4_MAX) * scale
        error = importance @ np.square(w - q)
        better = error < best_error
        best_scale = np.where(better, scale, best_scale)
        best_error = np.where(better, error, best_error)
    return best_scale.astype(np.float32)


def inverse_hessian_factor(x: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(upper Cholesky factor of H⁻¹, diag H) for the input sample x [n, K], damped."""
    x = np.asarray(x, np.float64).reshape(-1, channels)
    h = x.T @ x / max(len(x), 1)
    diag = np.diag(h).copy()
    dead = diag == 0
    h[dead, dead] = 1.0
    h[np.diag_indices(channels)] += DAMPING * float(np.mean(np.diag(h)))
    lower = np.linalg.cholesky(h)
    inverse = np.linalg.inv(lower)
    h_inv = inverse.T @ inverse
    return np.linalg.cholesky(h_inv).T, diag


def gptq_int4(w: np.ndarray, x: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantise w [K, N] (K contracted) to int4 in blocks of `block_size` along K, GPTQ-rounded
    against input rows x [n, K]. Returns (q int8 in [−8, 7] [K, N], scale float32 [ceil(K/bs), N]):
    quantise_int4's layout, so the same DequantizeLinear reads it."""
    w = np.array(w, np.float64)
    k, n = w.shape
    factor, importance = inverse_hessian_factor(x, k)
    w[importance == 0] = 0.0
    q = np.zeros((k, n), np.int8)
    scales = np.zeros((-(-k // block_size), n), np.float32)
    lazy = max(block_size, LAZY_ROWS // block_size * block_size)  # a block never straddles two
    for start in range(0, k, lazy):
        stop = min(start + lazy, k)
        chunk = w[start:stop]
        errors = np.zeros_like(chunk)
        f = factor[start:stop, start:stop]
        for i in range(stop - start):
            row = start + i
            if row % block_size == 0:
                end = min(i + block_size, stop - start)
                scales[row // block_size] = block_scale(chunk[i:end], importance[row : start + end])
            scale = scales[row // block_size].astype(np.float64)
            q[row] = np.clip(np.rint(chunk[i] / scale), INT4_MIN, INT4_MAX)
            errors[i] = (chunk[i] - q[row] * scale) / f[i, i]
            chunk[i + 1 :] -= np.outer(f[i, i + 1 :], errors[i])
        w[stop:] -= factor[start:stop, stop:].T @ errors
    return q, scales
