"""NumPy kernels, one per op: `op_<name>(*inputs, **attrs)`.

These functions use only the global `np`, so the same source runs on CuPy by binding
`np` to `cupy` (the CuPy backend does exactly that), and `attndsl compile --emit numpy`
copies their source into a standalone module. Dtype: float tensors stay in the dtype of
their inputs (float32 by default, float64 on request); `DTYPE` is the program's float
type, used for tables the kernels create (positions, constants).
"""

import math

import numpy as np

DTYPE = np.float32
_MASKS: dict = {}


def op_constant(*, value, dtype):
    return np.asarray(value, dtype=DTYPE if dtype == "float" else bool)


def op_arange(*, n, offset):
    return np.arange(offset, offset + n, dtype=np.int64)


def op_sinusoidal(*, n, dim, offset):
    pos = np.arange(offset, offset + n, dtype=np.float64)[:, None]        # (n, 1)
    inv = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-math.log(10000.0) / dim))
    table = np.empty((n, dim), dtype=np.float64)                           # (n, dim)
    table[:, 0::2] = np.sin(pos * inv)
    table[:, 1::2] = np.cos(pos * inv)
    return table.astype(DTYPE)


def op_add(a, b):
    return np.add(a, b)


def op_sub(a, b):
    return np.subtract(a, b)


def op_mul(a, b):
    return np.multiply(a, b)


def op_div(a, b):
    return np.true_divide(a, b)


def op_pow(a, b):
    return np.power(a, b)


def op_maximum(a, b):
    return np.maximum(a, b)


def op_minimum(a, b):
    return np.minimum(a, b)


def op_less(a, b):
    return np.less(a, b)


def op_greater(a, b):
    return np.greater(a, b)


def op_equal(a, b):
    return np.equal(a, b)


def op_neg(x):
    return np.negative(x)


def op_exp(x):
    return np.exp(x)


def op_log(x):
    return np.log(x)


def op_sqrt(x):
    return np.sqrt(x)


def op_tanh(x):
    return np.tanh(x)


def op_abs(x):
    return np.abs(x)


def op_sigmoid(x):
    # 1 / (1 + exp(-x)) without overflow: exp(-|x|) is always <= 1
    e = np.exp(-np.abs(x))
    out_dtype = x.dtype if x.dtype.kind == "f" else DTYPE   # int input: float result
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(out_dtype)


def op_relu(x):
    return np.maximum(x, 0)


def op_silu(x):
    return x * op_sigmoid(x)


def _erf(x):
    # Cephes' rational fits (S. L. Moshier), accurate to ~1e-16 in float64 (the former
    # 1.2e-7 Chebyshev fit broke float64 agreement): x T(x^2) / U(x^2) for |x| < 1, else
    # 1 - exp(-x^2) P(|x|) / Q(|x|) with P/Q taken at min(|x|, 8) (erfc(8) < 1e-28).
    def horner(coefs, v):
        out = np.full_like(v, coefs[0])
        for c in coefs[1:]:
            out *= v
            out += c
        return out

    z = np.abs(x)
    zz = z * z
    z2 = np.minimum(zz, 1.0)
    small = x * horner((9.60497373987051638749e0, 9.00260197203842689217e1,
                        2.23200534594684319226e3, 7.00332514112805075473e3,
                        5.55923013010394962768e4), z2) / horner(
        (1.0, 3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
         2.26290000613890934246e4, 4.92673942608635921086e4), z2)
    zc = np.clip(z, 1.0, 8.0)
    erfc = np.exp(-zz) * horner((2.46196981473530512524e-10, 5.64189564831068821977e-1,
                                 7.46321056442269912687e0, 4.86371970985681366614e1,
                                 1.96520832956077098242e2, 5.26445194995477358631e2,
                                 9.34528527171957607540e2, 1.02755188689515710272e3,
                                 5.57535335369399327526e2), zc) / horner(
        (1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
         9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
         1.65666309194161350182e3, 5.57535340817727675546e2), zc)
    return np.where(z < 1.0, small, np.where(x >= 0, 1.0 - erfc, erfc - 1.0)).astype(x.dtype)


def op_gelu(x, *, approximate):
    if approximate == "none":
        return 0.5 * x * (1.0 + _erf(x * (1.0 / math.sqrt(2.0))))
    t = x * x                       # tanh form, computed in place: 0.5x(1 + tanh(c(x + a x^3)))
    t *= 0.044715
    t += 1.0
    t *= x
    t *= math.sqrt(2.0 / math.pi)
    np.tanh(t, out=t)
    t += 1.0
    t *= x
    t *= 0.5
    return t


def op_cast(x, *, dtype):
    return x.astype({"float": DTYPE, "int": np.int64, "bool": bool}[dtype])


def op_dropout(x, *, p):
    return x  # inference: dropout is the identity


def op_where(cond, a, b):
    return np.where(cond, a, b)


def op_matmul(a, b):
    return np.matmul(a, b)


def op_linear(x, w, b=None, *, has_bias):
    y = np.matmul(x.reshape(-1, x.shape[-1]), w.T)   # (N, out): one GEMM for all rows
    if b is not None:
        y += b
    return y.reshape(x.shape[:-1] + (w.shape[0],))


def op_transpose(x, *, perm):
    return np.transpose(x, perm)


def op_reshape(x, *, shape):
    return np.reshape(x, shape)


def op_sum(x, *, axes, keepdims):
    return np.sum(x, axis=axes, keepdims=keepdims)


def op_mean(x, *, axes, keepdims):
    return np.mean(x, axis=axes, keepdims=keepdims)


def op_max(x, *, axes, keepdims):
    return np.max(x, axis=axes, keepdims=keepdims)


def op_concat(*xs, axis):
    return np.concatenate(xs, axis=axis)


def op_expand(x, *, shape):
    return np.broadcast_to(x, shape)


def op_index(x, *, index):
    return x[tuple(i if isinstance(i, int) else slice(*i) for i in index)]


def op_softmax(x, *, axis):
    e = x - np.max(x, axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def op_layer_norm(x, g, b=None, *, eps, has_bias):
    mu = np.mean(x, axis=-1, keepdims=True)
    xc = x - mu                                        # (..., d)
    var = np.mean(np.square(xc), axis=-1, keepdims=True)
    xc *= 1.0 / np.sqrt(var + eps)
    xc *= g
    if b is not None:
        xc += b
    return xc


def op_rms_norm(x, g, *, eps):
    ms = np.mean(np.square(x), axis=-1, keepdims=True)
    y = x * (1.0 / np.sqrt(ms + eps))
    y *= g
    return y


def op_embedding(table, ids):
    if ids.size and int(ids.min()) < 0:   # np.take would wrap -1 to the last row
        raise IndexError(f"embedding id {int(ids.min())} is out of range [0, {table.shape[0]})")
    return np.take(table, ids, axis=0)


def attention_mask(pattern, tq, tk):
    """Boolean [tq, tk] mask of allowed positions (None if all are); queries are the last
    tq of the tk positions, as in cached decoding. Cached per (pattern, tq, tk)."""
    if pattern is None:
        return None
    key = (pattern, tq, tk)
    if key not in _MASKS:
        q = np.arange(tk - tq, tk)[:, None]
        k = np.arange(tk)[None, :]
        _MASKS[key] = eval(pattern, {"abs": abs}, {"q": q, "k": k})  # noqa: S307 - pattern text
    return _MASKS[key]


def op_attention(q, k, v, key_padding=None, *, pattern, scale, dropout):
    """softmax(q k^T * scale + mask) v on (B, H, T, D); fully masked rows give zeros."""
    s = np.matmul(q, np.swapaxes(k, -1, -2))           # (B, H, Tq, Tk)
    s *= scale
    mask = attention_mask(pattern, q.shape[-2], k.shape[-2])
    if key_padding is not None:
        pad = key_padding[:, None, None, :]            # (B, 1, 1, Tk)
        mask = pad if mask is None else (mask & pad)
    if mask is not None:
        np.copyto(s, -np.inf, where=~mask)
    m = np.max(s, axis=-1, keepdims=True)              # (B, H, Tq, 1)
    if mask is not None:
        m[~np.isfinite(m)] = 0.0
    s -= m
    np.exp(s, out=s)
    den = np.sum(s, axis=-1, keepdims=True)
    if mask is not None:
        den[den == 0] = 1.0
    s /= den
    return np.matmul(s, v)                             # (B, H, Tq, Dv)


def op_attention_cached(cache, key, q, k, v, key_padding=None, **attrs):
    """Decoding step: append this step's keys/values to `cache[key]`, attend over all."""
    if key in cache:
        k = np.concatenate([cache[key][0], k], axis=-2)   # (B, H, past + T, D)
        v = np.concatenate([cache[key][1], v], axis=-2)
    cache[key] = (k, v)
    return op_attention(q, k, v, key_padding, **attrs)


def op_layer_drop(x, y, *, p):
    return y  # inference: the layer always runs
