"""Shared Triton device functions: the logit transform and one streaming pass over a row of logits.

The transform (SPEC 10) maps a raw logit ``z`` to ``v`` with ``s = v / T'``: without cap ``v = z``
and ``T' = T / logit_scale`` (the scale folded into the temperature, so ``logit_scale = 1`` is
bit-identical to no transform); with a cap ``v = softcap tanh(logit_scale z / softcap)`` and
``T' = T`` (a ``-inf`` logit stays ``-inf``). ``v`` is increasing in ``z``.

The pass keeps the running max ``m`` of ``v`` and, with centred scaled values ``c = (v - m) / T'``,
the sums ``d = sum exp(c)`` and ``t = sum exp(c) c``; when the max moves to ``m'`` they rescale by
``a = exp((m - m') / T')``: ``d' = a d``, ``t' = a (t + d (m - m') / T')``. Then
``lse = m / T' + log d``, ``sum p s - m / T' = t / d`` and ``entropy = log d - t / d``. Centring
before scaling keeps ``v - m`` exact for extreme logits (±1e4), so logp and entropy do not cancel
two large rounded numbers; ``log d`` is returned in float64 so that ``logp`` (and the loss's ratio
``exp(logp - old_logp)``) carries only the error of the fp32 sum ``d``, not an fp32 rounding of a
number near ``log V``. Entries equal to ``-inf`` (padded vocabulary) contribute nothing.
With ``EXTRAS`` the same pass also keeps ``q = sum exp(2c)`` (rescaled by ``a^2``), ``sum_v v`` and
the max of ``v`` over the entries before the target (``is_top1``: the first index of the max).
"""
import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """``tanh`` accurate to a few fp32 ulps, without a libm call: ``(1 - e) / (1 + e)``,
    ``e = exp(-2|x|)`` for ``|x| >= 0.25``, the odd Taylor series to ``x^9`` below (no cancellation)."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    large = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    magnitude = tl.where(ax < 0.25, small, large)
    return tl.where(x < 0, -magnitude, magnitude)


@triton.jit
def transformed(z, tanh_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """``(v, tanh)`` of raw fp32 logits ``z``: ``v = softcap tanh(tanh_scale z)`` (``tanh_scale =
    logit_scale / softcap``; ``-inf`` kept) with a cap, else ``v = z`` (``tanh`` then is ``z``, unused)."""
    if HAS_SOFTCAP:
        t = tanh(z * tanh_scale)
        v = tl.where(z == float("-inf"), z, softcap * t)
    else:
        t = z
        v = z
    return v, t


@triton.jit
def row_softmax_stats(row_ptr, inv_temperature, tanh_scale, softcap, target, V: tl.constexpr,
                      BLOCK_V: tl.constexpr, HAS_SOFTCAP: tl.constexpr, EXTRAS: tl.constexpr):
    """Returns ``(m, log d, t / d, q, sum v, max_{v < y} v)`` of one row, ``log d`` in float64 (see
    the module docstring; the last three are 0 / -inf without ``EXTRAS``)."""
    m = tl.full((), float("-inf"), tl.float32)
    d = tl.zeros((), tl.float32)
    t = tl.zeros((), tl.float32)
    q = tl.zeros((), tl.float32)
    total = tl.zeros((), tl.float32)
    before = tl.full((), float("-inf"), tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        z = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        v, _ = transformed(z, tanh_scale, softcap, HAS_SOFTCAP)
        m_new = tl.maximum(m, tl.max(v, axis=0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        shift = tl.where(m == float("-inf"), 0.0, (m - m_ref) * inv_temperature)
        alpha = tl.exp(shift)
        e = tl.exp((v - m_ref) * inv_temperature)
        centred = tl.where(e > 0, (v - m_ref) * inv_temperature, 0.0)
        t = alpha * (t + d * shift) + tl.sum(e * centred, axis=0)
        d = alpha * d + tl.sum(e, axis=0)
        if EXTRAS:
            q = alpha * alpha * q + tl.sum(e * e, axis=0)
            total += tl.sum(tl.where(offs < V, v, 0.0), axis=0)
            before = tl.maximum(before, tl.max(tl.where(offs < target, v, float("-inf")), axis=0))
        m = m_new
    return m, tl.log(d.to(tl.float64)), t / d, q, total, before


@triton.jit
def target_logit(row_ptr, target, V: tl.constexpr):
    """``z[y]``; 0 for a target outside ``[0, V)`` (ignored tokens), without reading out of bounds."""
    valid = (target >= 0) & (target < V)
    index = tl.where(valid, target, 0)
    return tl.where(valid, tl.load(row_ptr + index).to(tl.float32), 0.0)
