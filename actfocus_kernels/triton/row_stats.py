"""Shared Triton device functions: one streaming pass over a row of logits.

The pass keeps the running max ``m`` of the raw logits ``z`` and, with centred scaled logits
``c = (z - m) / T``, the sums ``d = sum exp(c)`` and ``t = sum exp(c) c``; when the max moves to
``m'`` they rescale by ``a = exp((m - m') / T)``: ``d' = a d``, ``t' = a (t + d (m - m') / T)``.
Then, with ``s = z / T``: ``lse = m / T + log d``, ``sum p s - m / T = t / d`` and
``entropy = log d - t / d``. Centring the raw logits before scaling keeps ``z - m`` exact for
extreme logits (±1e4), so logp and entropy do not cancel two large rounded numbers; ``log d`` is
returned in float64 so that ``logp`` (and the loss's ratio ``exp(logp - old_logp)``) carries only
the error of the fp32 sum ``d``, not an fp32 rounding of a number near ``log V``.
Entries equal to ``-inf`` (padded vocabulary) contribute nothing.
"""
import triton
import triton.language as tl


@triton.jit
def row_softmax_stats(row_ptr, inv_temperature, V: tl.constexpr, BLOCK_V: tl.constexpr):
    """Returns ``(m, log d, t / d)`` of one row, ``log d`` in float64 (see the module docstring)."""
    m = tl.full((), float("-inf"), tl.float32)
    d = tl.zeros((), tl.float32)
    t = tl.zeros((), tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        z = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        shift = tl.where(m == float("-inf"), 0.0, (m - m_ref) * inv_temperature)
        alpha = tl.exp(shift)
        e = tl.exp((z - m_ref) * inv_temperature)
        centred = tl.where(e > 0, (z - m_ref) * inv_temperature, 0.0)
        t = alpha * (t + d * shift) + tl.sum(e * centred, axis=0)
        d = alpha * d + tl.sum(e, axis=0)
        m = m_new
    return m, tl.log(d.to(tl.float64)), t / d


@triton.jit
def target_logit(row_ptr, target, V: tl.constexpr):
    """``z[y]``; 0 for a target outside ``[0, V)`` (ignored tokens), without reading out of bounds."""
    valid = (target >= 0) & (target < V)
    index = tl.where(valid, target, 0)
    return tl.where(valid, tl.load(row_ptr + index).to(tl.float32), 0.0)
