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
    return np.asarray(value, dtype={"float": DTYPE, "int": np.int64, "bool": bool}[dtype])


def op_size(*, value):
    return np.asarray(value, dtype=np.int64)


def op_arange(*, n, offset):
    return np.arange(offset, offset + n, dtype=np.int64)


def op_sinusoidal(*, n, dim, offset):
    pos = np.arange(offset, offset + n, dtype=np.float64)[:, None]        # (n, 1)
    inv = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-math.log(10000.0) / dim))
    table = np.empty((n, dim), dtype=np.float64)                           # (n, dim)
    table[:, 0::2] = np.sin(pos * inv)
    table[:, 1::2] = np.cos(pos * inv)
    return table.astype(DTYPE)


def op_add(a, b, out=None):
    return np.add(a, b, out=out)


def op_sub(a, b, out=None):
    return np.subtract(a, b, out=out)


def op_mul(a, b, out=None):
    return np.multiply(a, b, out=out)


def op_div(a, b, out=None):
    return np.true_divide(a, b, out=out)


def op_logical_and(a, b):
    return np.logical_and(a, b)


def op_logical_or(a, b):
    return np.logical_or(a, b)


def op_logical_not(x):
    return np.logical_not(x)


def op_pow(a, b):
    return np.power(a, b)


def op_maximum(a, b, out=None):
    return np.maximum(a, b, out=out)


def op_minimum(a, b, out=None):
    return np.minimum(a, b, out=out)


def op_less(a, b):
    return np.less(a, b)


def op_greater(a, b):
    return np.greater(a, b)


def op_equal(a, b):
    return np.equal(a, b)


def op_neg(x, out=None):
    return np.negative(x, out=out)


def op_exp(x, out=None):
    return np.exp(x, out=out)


def op_log(x):
    return np.log(x)


def op_sqrt(x):
    return np.sqrt(x)


def op_tanh(x, out=None):
    return np.tanh(x, out=out)


def op_abs(x):
    return np.abs(x)


def op_sin(x):
    return np.sin(x)


def op_cos(x):
    return np.cos(x)


def op_sign(x):
    return np.sign(x)


def op_softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|) without overflow; x itself past 20 (torch)
    y = np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    return np.where(x > 20, x, y).astype(x.dtype)


def op_clip(x, *, lo, hi):
    return np.clip(x, lo, hi)


def op_sigmoid(x):
    # 1 / (1 + exp(-x)) without overflow: exp(-|x|) is always <= 1; two buffers at most
    e = np.abs(x).astype(x.dtype if x.dtype.kind == "f" else DTYPE)  # int input: float
    np.negative(e, out=e)
    np.exp(e, out=e)                                                  # e = exp(-|x|)
    out = np.where(x >= 0, np.ones((), dtype=e.dtype), e)             # numerators
    e += 1.0
    out /= e
    return out


def op_relu(x, out=None):
    return np.maximum(x, 0, out=out)


def op_silu(x, out=None):
    return np.multiply(op_sigmoid(x), x, out=out)


def _erf(x):
    # Cephes' rational fits (S. L. Moshier), accurate to ~1e-16 in float64 (the former
    # 1.2e-7 Chebyshev fit broke float64 agreement): x T(x^2) / U(x^2) for |x| < 1, else
    # 1 - exp(-x^2) P(|x|) / Q(|x|) with P/Q taken at min(|x|, 8) (erfc(8) < 1e-28).
    # In place where it can be: five arrays of x's size at most.
    def horner(coefs, v):
        out = np.full_like(v, coefs[0])
        for c in coefs[1:]:
            out *= v
            out += c
        return out

    z = np.abs(x)
    inside = z < 1.0
    zz = np.square(z)
    z2 = np.minimum(zz, 1.0)
    small = horner((9.60497373987051638749e0, 9.00260197203842689217e1,
                    2.23200534594684319226e3, 7.00332514112805075473e3,
                    5.55923013010394962768e4), z2)
    small *= x
    small /= horner((1.0, 3.35617141647503099647e1, 5.21357949780152679795e2,
                     4.59432382970980127987e3, 2.26290000613890934246e4,
                     4.92673942608635921086e4), z2)
    del z2
    zc = np.clip(z, 1.0, 8.0, out=z)
    e = np.exp(np.negative(zz, out=zz), out=zz)                      # exp(-x^2)
    erfc = horner((2.46196981473530512524e-10, 5.64189564831068821977e-1,
                   7.46321056442269912687e0, 4.86371970985681366614e1,
                   1.96520832956077098242e2, 5.26445194995477358631e2,
                   9.34528527171957607540e2, 1.02755188689515710272e3,
                   5.57535335369399327526e2), zc)
    erfc *= e
    del e
    erfc /= horner((1.0, 1.32281951154744992508e1, 8.67072140885989742329e1,
                    3.54937778887819891062e2, 9.75708501743205489753e2,
                    1.82390916687909736289e3, 2.24633760818710981792e3,
                    1.65666309194161350182e3, 5.57535340817727675546e2), zc)
    out = np.subtract(1.0, erfc, out=erfc)                           # erfc <= 1: out >= 0
    np.copysign(out, x, out=out)                                     # erf(-x) = -erf(x)
    np.copyto(out, small, where=inside)
    return out.astype(x.dtype, copy=False)


PARALLEL_MIN = 1 << 16       # elements: below this a kernel runs in one thread


def _in_threads(fn, out, *rows):
    """fn(*row blocks of `rows`, out=the same rows of `out`) over all rows of the 2-D `out`,
    ACTIVATION_BLOCK elements at a time (the temporaries of a many-pass kernel stay in
    cache), the blocks split over threads when large, as torch's elementwise kernels use the
    cores; for elementwise and row-wise work the same numbers as one call. NumPy only: with
    `np` bound to CuPy, one thread; inside a kernel thread, one thread (waiting there on the
    pool could wait on itself)."""
    import threading
    workers = _workers()
    if (out.size < PARALLEL_MIN or type(out).__module__ != "numpy" or workers < 2
            or threading.current_thread().name.startswith("attndsl-kernel")):
        _by_blocks(fn, out, *rows)
        return out
    n = out.shape[0]
    parts = min(workers, n)
    cut = [n * i // parts for i in range(parts + 1)]
    jobs = [_workers.pool.submit(_by_blocks, fn, out[lo:hi], *(r[lo:hi] for r in rows))
            for lo, hi in zip(cut[1:-1], cut[2:])]
    _by_blocks(fn, out[:cut[1]], *(r[:cut[1]] for r in rows))
    for job in jobs:
        job.result()
    return out


def _workers():
    """Threads for `_in_threads` (the CPUs this process may use, at most 8); the pool is
    made at the first call in each process (a forked child's copy has no threads)."""
    import os
    if getattr(_workers, "pid", None) != os.getpid():
        from concurrent.futures import ThreadPoolExecutor
        _workers.count = min(len(os.sched_getaffinity(0)), 8)
        _workers.pool = ThreadPoolExecutor(max(_workers.count - 1, 1), "attndsl-kernel")
        _workers.pid = os.getpid()
    return _workers.count


def _rows(x):
    """x as 2-D rows (..., d) -> (N, d), a view when x is contiguous."""
    return x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)


def op_gelu(x, *, approximate, out=None):
    y = np.empty(x.shape, x.dtype) if out is None else out
    _in_threads(_gelu_exact if approximate == "none" else _gelu_tanh, _rows(y), _rows(x))
    return y


def _by_blocks(fn, out, *rows):
    """fn(*rows, out=out) a block of rows (ACTIVATION_BLOCK elements) at a time."""
    step = max(ACTIVATION_BLOCK // max(out.shape[1], 1), 1)
    for i in range(0, out.shape[0], step):
        fn(*(r[i:i + step] for r in rows), out=out[i:i + step])


def _gelu_exact(x, out):
    t = _erf(x * (1.0 / math.sqrt(2.0)))
    t += 1.0
    np.multiply(t, x, out=out)
    out *= 0.5


def _gelu_tanh(x, out):
    t = np.multiply(x, x, out=out)  # in place: 0.5x(1 + tanh(c(x + a x^3)))
    t *= 0.044715
    t += 1.0
    t *= x
    t *= math.sqrt(2.0 / math.pi)
    np.tanh(t, out=t)
    t += 1.0
    t *= x
    t *= 0.5


def op_cast(x, *, dtype):
    return x.astype({"float": DTYPE, "int": np.int64, "bool": bool}[dtype])


def op_dropout(x, *, p):
    return x  # inference: dropout is the identity


def op_where(cond, a, b):
    return np.where(cond, a, b)


def op_matmul(a, b):
    return np.matmul(a, b)


def op_linear(x, w, b=None, *, has_bias, activation=None, out=None):
    y = np.matmul(x.reshape(-1, x.shape[-1]), w.T,   # (N, out): one GEMM for all rows
                  out=None if out is None else out.reshape(-1, w.shape[0]))
    if activation is not None:                       # fused: bias and activation per row block
        _in_threads(lambda z, out: _bias_activation(z, b, activation), y, y)
    elif b is not None:
        y += b
    return y.reshape(x.shape[:-1] + (w.shape[0],))


ACTIVATION_BLOCK = 1 << 18   # elements per block of the many-pass row kernels (L2-sized)


def _bias_activation(z, b, activation):
    """z (rows, d) <- act(z + b) in place (the same operations, so the same numbers, as the
    bias add and the activation's kernel one after the other)."""
    if b is not None:
        z += b
    if activation == "relu":
        op_relu(z, out=z)
    elif activation == "silu":
        op_silu(z, out=z)
    elif activation == "gelu":
        _gelu_exact(z, out=z)                        # reads x only before each write
    else:
        _gelu_tanh(z.copy(), out=z)


def op_linear_int8(x, w, scale, b=None, *, has_bias):
    y = np.matmul(x.reshape(-1, x.shape[-1]), w.T.astype(x.dtype))   # (N, out), W dequantized
    y *= scale                                                        # per output channel
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


def op_min(x, *, axes, keepdims):
    return np.min(x, axis=axes, keepdims=keepdims)


def op_cumsum(x, *, axis):
    return np.cumsum(x, axis=axis, dtype=x.dtype if x.dtype.kind != "b" else DTYPE)


def op_one_hot(ids, *, n):
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise IndexError(f"one_hot ids must be in [0, {n}), got [{int(ids.min())}, "
                         f"{int(ids.max())}]")
    return (ids[..., None] == np.arange(n)).astype(DTYPE)


def op_top_k_indices(x, *, k, axis):
    order = np.argsort(-x, axis=axis, kind="stable")     # largest first, ties by index
    return np.take(order, np.arange(k), axis=axis)


def op_gather(x, index, *, axis):
    n = x.shape[axis]
    if index.size and (int(index.min()) < -n or int(index.max()) >= n):
        raise IndexError(f"gather index out of range [0, {n}) along axis {axis}")
    return np.take_along_axis(x, index % n, axis=axis)


def op_concat(*xs, axis, out=None):
    return np.concatenate(xs, axis=axis, out=out)


def op_expand(x, *, shape):
    return np.broadcast_to(x, shape)


def op_index(x, *, index):
    return x[tuple(i if isinstance(i, int) else slice(*i) for i in index)]


def op_softmax(x, *, axis, out=None):
    e = np.subtract(x, np.max(x, axis=axis, keepdims=True), out=out)
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    _flush_subnormals(e)
    return e


def _flush_subnormals(p):
    """Set subnormal probabilities to 0 in place. exp(x) for x < -87 is subnormal in
    float32 (ALiBi puts far keys there), and a GEMM reading subnormals runs ~10x slower on
    x86; they are below 1.2e-38, far under the resolution of a row that sums to 1."""
    np.copyto(p, 0, where=p < np.finfo(p.dtype).tiny)


def op_layer_norm(x, g=None, b=None, *, eps, has_bias, out=None):
    y = np.empty(x.shape, x.dtype) if out is None else out
    _in_threads(lambda x, out: _layer_norm_rows(x, g, b, eps, out), _rows(y), _rows(x))
    return y


def _layer_norm_rows(x, g, b, eps, out):
    """out (N, d) <- layer_norm(x) row by row; out may be x."""
    mu = np.mean(x, axis=-1, keepdims=True)
    xc = np.subtract(x, mu, out=out)
    var = np.mean(np.square(xc), axis=-1, keepdims=True)
    xc *= 1.0 / np.sqrt(var + eps)
    if g is not None:                                  # affine=false: no gamma, no beta
        xc *= g
    if b is not None:
        xc += b


def op_add_layer_norm(a, r, g=None, b=None, *, eps, has_bias, out=None):
    """layer_norm(a + r), a cache-sized block of rows at a time: the sum is normalized
    while in cache (the same operations as the add and the norm one after the other)."""
    y = np.empty(a.shape, a.dtype) if out is None else out

    def block(a, r, out):
        _layer_norm_rows(np.add(a, r, out=out), g, b, eps, out)

    _in_threads(block, _rows(y), _rows(a), _rows(r))
    return y


def op_rms_norm(x, g, b=None, *, eps, out=None):
    ms = np.mean(np.square(x), axis=-1, keepdims=True)
    y = np.multiply(x, 1.0 / np.sqrt(ms + eps), out=out)
    y *= g
    if b is not None:
        y += b
    return y


def op_embedding(table, ids):
    lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
    if lo < 0 or hi >= table.shape[0]:                 # np.take would wrap -1 to the last row
        raise IndexError(f"embedding id {lo if lo < 0 else hi} is out of range "
                         f"[0, {table.shape[0]})")
    return np.take(table, ids, axis=0)


def attention_mask(pattern, tq, tk):
    """Boolean [tq, tk] mask of allowed positions (None if all are); queries are the last
    tq of the tk positions, as in cached decoding. The 16 most recently used masks are
    kept (a server seeing many lengths does not grow without bound)."""
    if pattern is None:
        return None
    key = (pattern, tq, tk)
    mask = _MASKS.pop(key, None)
    if mask is None:
        q = np.arange(tk - tq, tk)[:, None]
        k = np.arange(tk)[None, :]
        mask = eval(pattern, {"abs": abs}, {"q": q, "k": k, "n": tk})  # noqa: S307
    _MASKS[key] = mask
    while len(_MASKS) > 16:
        del _MASKS[next(iter(_MASKS))]
    return mask


def _rope_inv_freq(rope):
    """Inverse frequencies (dims/2,) in float64 after the rope's scaling."""
    theta, dims, _, scaling = rope
    if scaling[0] == "ntk":
        theta = theta * scaling[1] ** (dims / (dims - 2))
    inv = 1.0 / theta ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
    if scaling[0] == "linear":
        inv = inv / scaling[1]
    elif scaling[0] == "llama3":
        factor, low, high, old = scaling[1:]
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        medium = (wavelen <= old / low) & (wavelen >= old / high)
        inv = np.where(medium, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return inv


def _rope(x, offset, rope, inverse=False, in_place=False):
    """Rotate the first `dims` features of x (B, H, T, D) at positions offset..offset+T-1;
    `inverse` rotates back (the transpose, used by the gradient); into a copy, or with
    `in_place` into x itself, ROPE_ROWS positions at a time (temporaries of that size)."""
    _, dims, layout, _ = rope
    ang = np.arange(offset, offset + x.shape[-2], dtype=np.float64)[:, None] * _rope_inv_freq(
        rope)[None, :]                                                      # (T, dims/2)
    cos, sin = np.cos(ang).astype(x.dtype), np.sin(ang).astype(x.dtype)
    if inverse:
        sin = -sin
    first, second = (slice(0, dims // 2), slice(dims // 2, dims)) if layout == "half" else (
        slice(0, dims, 2), slice(1, dims, 2))
    out = x if in_place else x.copy()
    for t in range(0, x.shape[-2], ROPE_ROWS):
        x1, x2 = out[..., t:t + ROPE_ROWS, first], out[..., t:t + ROPE_ROWS, second]
        c, s = cos[t:t + ROPE_ROWS], sin[t:t + ROPE_ROWS]
        x1s = x1 * s                                 # x1 cos - x2 sin, x2 cos + x1 sin
        x1 *= c
        x1 -= x2 * s
        x2 *= c
        x2 += x1s
    return out


ROPE_ROWS = 64   # positions per block of the in-place rotation


def _alibi_slopes(heads):
    """Press et al.'s head slopes: 2^(-8i/n) for n a power of two, else the slopes of the
    next lower power of two plus every other slope of twice that."""
    def power_of_two(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    lower = 2 ** int(math.floor(math.log2(heads)))
    slopes = power_of_two(lower)
    if lower != heads:
        slopes += power_of_two(2 * lower)[0::2][:heads - lower]
    return np.asarray(slopes, dtype=np.float64)


def _t5_buckets(rel, buckets, max_distance, bidirectional):
    """Raffel et al.'s bucket of each relative position rel = key - query (int array)."""
    out = np.zeros(rel.shape, dtype=np.int64)
    if bidirectional:
        buckets //= 2
        out += (rel > 0) * buckets
        n = np.abs(rel)
    else:
        n = -np.minimum(rel, 0)
    exact = buckets // 2
    log = np.log(np.maximum(n, 1) / exact) / math.log(max_distance / exact)
    large = np.minimum(exact + (log * (buckets - exact)).astype(np.int64), buckets - 1)
    return out + np.where(n < exact, n, large)


def _relative_values(term, table, heads, tq, tk):
    """(H, tq + tk - 1) bias of each relative position rel = -(tk-1) .. tq-1 (key minus
    query position, queries being the last tq of tk) for an ALiBi or T5 term."""
    rel = np.arange(-(tk - 1), tq)
    if term[0] == "alibi":
        return -_alibi_slopes(heads)[:, None] * np.abs(rel)[None, :]
    return np.transpose(table[_t5_buckets(rel, *term[1:])])


def _toeplitz(values, tq, tk):
    """The (tq, tk) view M[i, j] = values[j - i + tq - 1] (no copy; only ever read)."""
    start = values[tq - 1:]
    step = start.strides[0]
    return np.lib.stride_tricks.as_strided(start, (tq, tk), (-step, step))


def _relative_index(k, tq, tk, r0, r1):
    """Shaw et al.'s clip(key - query, -k, k) + k for query rows r0..r1, (r1 - r0, tk)."""
    rel = np.arange(tk)[None, :] - (tk - tq + np.arange(r0, r1))[:, None]
    return np.clip(rel, -k, k) + k


def _row_block(s):
    """Rows per block so a block of s (B, H, Tq, Tk) holds about 4M elements."""
    return max(1, (1 << 22) // max(1, s.shape[0] * s.shape[1] * s.shape[3]))


def _add_bias(s, q, ex, bias, scale):
    """Add every bias term to the logits s (B, H, Tq, Tk) in place; q is the (rotated) query,
    for Shaw's relative term. No temporary larger than a row block of s."""
    b, h, tq, tk = s.shape
    for i, term in enumerate(bias):
        table = ex.get(f"bias{i}")
        if term[0] == "tensor":
            s += table
        elif term[0] == "relative":
            qa = np.matmul(q, table.T)                                     # (B, H, Tq, 2k+1)
            qa *= scale
            rows = _row_block(s)
            for r0 in range(0, tq, rows):
                r1 = min(tq, r0 + rows)
                idx = _relative_index(term[1], tq, tk, r0, r1)[None, None]  # (1, 1, R, Tk)
                s[:, :, r0:r1] += np.take_along_axis(qa[:, :, r0:r1], idx, axis=-1)
        else:
            values = _relative_values(term, table, h, tq, tk).astype(s.dtype)   # (H, L)
            for head in range(h):
                view = _toeplitz(values[head], tq, tk)
                for bi in range(b):
                    s[bi, head] += view


def _grouped(x, kv_heads):
    """(B, H, T, D) -> (B, Hk, (H/Hk) T, D): query heads next to the key/value head they
    share (head h reads kv head h // (H/Hk), as Hugging Face's repeat_kv)."""
    b, h, t, d = x.shape
    return x.reshape(b, kv_heads, (h // kv_heads) * t, d)


def _additive_scores(q, k, ex):
    """Bahdanau: s[i, j] = v . tanh(Wq q_i + Wk k_j), computed per row block, (B, H, Tq, Tk)."""
    b, h, tq, _ = q.shape
    hk, tk = k.shape[1], k.shape[2]
    qa = np.matmul(q, ex["score_wq"].T).reshape(b, hk, h // hk, tq, -1)  # (B, Hk, G, Tq, A)
    ka = np.matmul(k, ex["score_wk"].T)[:, :, None, None]                  # (B, Hk, 1, 1, Tk, A)
    s = np.empty((b, hk, h // hk, tq, tk), dtype=q.dtype)
    rows = max(1, (1 << 22) // max(1, b * h * tk * qa.shape[-1]))
    for r0 in range(0, tq, rows):
        t = np.tanh(qa[:, :, :, r0:r0 + rows, None, :] + ka)             # (B, Hk, G, R, Tk, A)
        s[:, :, :, r0:r0 + rows] = np.matmul(t, ex["score_v"])
    return s.reshape(b, h, tq, tk)


def attention_probs(q, k, extra, pattern, scale, score, bias, rope, extras, rope_keys=True):
    """softmax(score(q, k) + bias + mask) as (B, H, Tq, Tk), fully masked rows zero; returns
    (probabilities, the rotated query, the rotated key). `extra` are the node's extra
    operands, named by `extras` ('key_padding', 'bias<i>', 'score_*')."""
    ex = {n: x for n, x in zip(extras, extra) if x is not None}
    b, h, tq, _ = q.shape
    hk, tk = k.shape[1], k.shape[2]
    if rope is not None:
        q = _rope(q, tk - tq, rope)
        k = _rope(k, 0, rope) if rope_keys else k
    if score == "additive":
        s = _additive_scores(q, k, ex)
        if scale != 1.0:
            s *= scale
    else:
        qs = np.matmul(q, ex["score_w"]) if score == "bilinear" else q
        qs = qs * qs.dtype.type(scale) if scale != 1.0 else qs           # scale the smaller
        s = np.matmul(_grouped(qs, hk), np.swapaxes(k, -1, -2))          # (B, Hk, G Tq, Tk)
        s = s.reshape(s.shape[0], h, tq, tk)                               # (B, H, Tq, Tk)
    if bias:
        _add_bias(s, q, ex, bias, scale)
    mask = attention_mask(pattern, tq, tk)
    pad = ex.get("key_padding")
    if pad is not None:
        pad = pad[:, None, None, :]                                        # (B, 1, 1, Tk)
        mask = pad if mask is None else (mask & pad)
    if mask is not None:
        np.copyto(s, -np.inf, where=~mask)
    den = np.empty(s.shape[:-1] + (1,), dtype=s.dtype)                    # (B, H, Tq, 1)
    _in_threads(lambda d, out: _softmax_rows(d, out, True), _rows(s), _rows(den))
    return s, q, k


def op_attention(q, k, v, *extra, pattern, scale, dropout, score="scaled", bias=(), rope=None,
                 extras=None, rope_keys=True, impl="dense", pattern_blocks=None,
                 pattern_band=None, rope_in_place=False):
    """softmax(score(q, k) + bias + mask) v on q (B, H, Tq, D), k (B, Hk, Tk, D),
    v (B, Hk, Tk, Dv) with H a multiple of Hk (K/V are shared, never repeated); fully masked
    rows give zeros. `extras` names the extra operands (default: a key_padding). `impl`:
    'dense' (one score buffer), 'tiled'/'sparse' (query tiles over the live key blocks of
    `pattern_blocks`, the pattern's block layout) or 'auto' (the cheapest by the cost model).
    `pattern_band` is for the torch kernel (here the blocked kernels cover bands). With
    `rope_in_place` (the compiler proved nothing reads q and k afterwards) the rotation
    overwrites them instead of making rotated copies."""
    extras = ("key_padding",) * len(extra) if extras is None else extras
    if rope_in_place and rope is not None:
        tq, tk = q.shape[-2], k.shape[-2]
        q = _rope(q, tk - tq, rope, in_place=True)
        k = _rope(k, 0, rope, in_place=True) if rope_keys else k
        rope = None
    impl = attention_impl(impl, q, k, v, pattern_blocks, score, bias, extras, pattern)
    if impl != "dense":
        ex = {n: x for n, x in zip(extras, extra) if x is not None}
        tq, tk = q.shape[-2], k.shape[-2]
        if rope is not None:
            q = _rope(q, tk - tq, rope)
            k = _rope(k, 0, rope) if rope_keys else k
        qs = np.matmul(q, ex["score_w"]) if score == "bilinear" else q
        return blocked_attention(qs, k, v, ex, pattern, pattern_blocks, scale, bias,
                                 impl == "sparse")
    return attention_dense(q, k, v, extra, pattern, scale, score, bias, rope, extras,
                           rope_keys)[0]


SAVED_PROBS_BYTES = 8 << 20      # the reverse mode keeps dense probabilities up to this size


def attention_keep(q, k, v, *extra, pattern, scale, dropout, score="scaled", bias=(),
                   rope=None, extras=None, rope_keys=True, impl="dense", pattern_blocks=None,
                   pattern_band=None):
    """`op_attention` in a program that also runs its backward: (output, saved), saved the
    dense path's (probabilities, rotated q, rotated k) when [B, H, Tq, Tk] takes at most
    SAVED_PROBS_BYTES (the VJP then does not recompute them), else None."""
    ex = ("key_padding",) * len(extra) if extras is None else extras
    size = max(q.shape[0], k.shape[0]) * q.shape[1] * q.shape[2] * k.shape[2] * q.itemsize
    if (size <= SAVED_PROBS_BYTES
            and attention_impl(impl, q, k, v, pattern_blocks, score, bias, ex, pattern) == "dense"):
        out, *saved = attention_dense(q, k, v, extra, pattern, scale, score, bias, rope, ex,
                                      rope_keys)
        return out, tuple(saved)
    return op_attention(q, k, v, *extra, pattern=pattern, scale=scale, dropout=dropout,
                        score=score, bias=bias, rope=rope, extras=extras, rope_keys=rope_keys,
                        impl=impl, pattern_blocks=pattern_blocks), None


def attention_dense(q, k, v, extra, pattern, scale, score, bias, rope, extras, rope_keys=True):
    """The dense path: (output (B, H, Tq, Dv), probabilities, rotated q, rotated k); the
    NumPy reverse mode keeps the last three for the backward instead of recomputing them."""
    p, qr, kr = attention_probs(q, k, extra, pattern, scale, score, bias, rope, extras,
                                rope_keys)
    b, h, tq, _ = p.shape
    out = np.matmul(_grouped(p, k.shape[1]), v)                            # (B, Hk, G Tq, Dv)
    return out.reshape(out.shape[0], h, tq, v.shape[-1]), p, qr, kr         # (B, H, Tq, Dv)


def op_attention_weights(q, k, v, *extra, pattern, scale, dropout, score="scaled", bias=(),
                         rope=None, extras=None, impl="dense", pattern_blocks=None,
                         pattern_band=None):
    """The attention probabilities (B, H, Tq, Tk) of `op_attention` with the same operands."""
    extras = ("key_padding",) * len(extra) if extras is None else extras
    return attention_probs(q, k, extra, pattern, scale, score, bias, rope, extras)[0]


def op_attention_cached(cache, key, q, k, v, *extra, **attrs):
    """Decoding step: rotate this step's keys at their positions, append keys/values to
    `cache[key]` (kv_heads of them), attend over all."""
    past = cache[key][0].shape[-2] if key in cache else 0
    if attrs.get("rope") is not None:
        k = _rope(k, past, attrs["rope"])
    if key in cache:
        k = np.concatenate([cache[key][0], k], axis=-2)   # (B, Hk, past + T, D)
        v = np.concatenate([cache[key][1], v], axis=-2)
    cache[key] = (k, v)
    return op_attention(q, k, v, *extra, rope_keys=False, **attrs)


def op_layer_drop(x, y, *, p):
    return y  # inference: the layer always runs


# -- blocked attention: query tiles over the live key blocks of the pattern's layout ---------

BLOCK = 128                    # query/key block size of the tiled and sparse kernels
TILE_ELEMENTS = 1 << 22        # score elements per step (16 MiB in float32)


def _block_grid(expr, tq, tk, block):
    """(nqb, nkb) bool grid of a block-layout expression (the layout's 'full' or 'empty'
    source) over (query block, key block) pairs."""
    q0 = (tk - tq + np.arange(0, tq, block))[:, None]
    k0 = np.arange(0, tk, block)[None, :]
    env = {"q0": q0, "q1": np.minimum(q0 + block, tk) - 1, "k0": k0,
           "k1": np.minimum(k0 + block, tk) - 1, "n": tk}
    grid = eval(expr, {"abs": abs}, env)  # noqa: S307 - pattern text
    return np.broadcast_to(grid, (q0.shape[0], k0.shape[1]))


def _live_blocks(layout, tq, tk, block):
    """(nqb, nkb) bool grid: the (query block, key block) pairs the pattern's layout does
    not prove empty (every pair for the full pattern)."""
    if layout is None:
        return np.ones((-(-tq // block), -(-tk // block)), dtype=bool)
    return ~_block_grid(layout[1], tq, tk, block)


def blocked_plan(layout, tq, tk, block, gather):
    """Steps of the blocked kernel: (query tiles, key index array) pairs. `gather`: each tile
    reads exactly its live key blocks, tiles with the same number of live keys batched
    together ('sparse'); else each tile reads the contiguous span from its first to its last
    live key block ('tiled'). Tiles without a live key block are absent (their rows are 0)."""
    live = _live_blocks(layout, tq, tk, block)                       # (nqb, nkb)
    steps = []
    groups = {}
    for i in range(live.shape[0]):
        js = np.flatnonzero(live[i])
        if not js.size:
            continue
        if gather:
            keys = (js[:, None] * block + np.arange(block)[None, :]).reshape(-1)
        else:
            keys = np.arange(js[0] * block, (js[-1] + 1) * block)
        keys = keys[keys < tk]
        rows = min(block, tq - i * block)
        group = (rows, keys.size) if gather else (rows, keys.size, i)   # tiled: one per tile
        groups.setdefault(group, []).append((i, keys))
    for group, members in groups.items():
        steps.append((np.array([i for i, _ in members]), np.stack([k for _, k in members]),
                      group[0]))
    return steps


def blocked_steps(layout, tq, tk, heads, gather):
    """`blocked_plan`'s steps cut so that one step's scores hold at most TILE_ELEMENTS
    (`heads`: batch x heads): (query tiles, their keys, rows) per step."""
    steps = []
    for tiles, keys, rows in blocked_plan(layout, tq, tk, BLOCK, gather):
        per_tile = max(1, TILE_ELEMENTS // max(1, heads * rows * keys.shape[1]))
        steps += [(tiles[c:c + per_tile], keys[c:c + per_tile], rows)
                  for c in range(0, len(tiles), per_tile)]
    return steps


def _tile_keys(x, keys):
    """x (B, Hk, Tk, D) at the keys (nt, K) of a step: (B, Hk, nt, K, D), a view when the
    step is one tile reading one contiguous span."""
    if len(keys) == 1 and keys[0, -1] - keys[0, 0] + 1 == keys.shape[1]:
        return x[:, :, keys[0, 0]:keys[0, -1] + 1][:, :, None]
    return x[:, :, keys]


def blocked_bias_values(bias, ex, heads, tq, tk, dtype):
    """The ALiBi/T5 terms' summed (H, tq + tk - 1) values per relative position, once per
    call (the blocked kernels read them per tile)."""
    if not bias:
        return None
    return sum(_relative_values(t, ex.get(f"bias{i}"), heads, tq, tk)
               for i, t in enumerate(bias)).astype(dtype)


def blocked_probs(q, k, ex, pattern, scale, values, tiles, keys, rows, block, full=None,
                  buf=None, normalize=True):
    """Probabilities for query tiles `tiles` (nt,) over their keys `keys` (nt, K), in
    blocks of `block` keys: (B, H, nt, rows, K); q, k already rotated (and q multiplied by W
    for bilinear); `values` from `blocked_bias_values` (or None). `full`: the layout's
    (nqb, nkb) grid of blocks the pattern keeps whole (`_block_grid`), whose columns need no
    mask; `buf`: a flat buffer to hold the scores; without `normalize`, (the unnormalized
    weights, their row sums) for the caller to divide its smaller product by."""
    b, h, tq, d = q.shape
    hk, tk = k.shape[1], k.shape[2]
    nt, width = len(tiles), keys.shape[1]
    qpos = (tiles[:, None] * block + np.arange(rows)[None, :])       # (nt, rows) local
    contiguous = nt == 1 and keys[0, -1] - keys[0, 0] + 1 == width
    qt = q[:, :, qpos]                                               # (B, H, nt, rows, D)
    if scale != 1.0:
        qt *= scale                                  # a copy: scale it, not the scores
    kt = _tile_keys(k, keys)
    g = h // hk
    shape = (max(b, k.shape[0]), hk, g, nt, rows, width)
    s = np.matmul(qt.reshape(b, hk, g, *qt.shape[2:]), np.swapaxes(kt, -1, -2)[:, :, None],
                  out=None if buf is None else buf[:math.prod(shape)].reshape(shape))
    s = s.reshape(s.shape[0], h, *s.shape[3:])                       # (B, H, nt, rows, K)
    if values is not None and contiguous:     # one tile over a key span: Toeplitz views
        start = keys[0, 0] - qpos[0, 0] + tq - 1 - (rows - 1)
        for head in range(h):
            view = _toeplitz(values[head, start:], rows, width)
            for bi in range(s.shape[0]):
                s[bi, head, 0] += view
    elif values is not None:
        s += values[:, keys[:, None, :] - qpos[:, :, None] + tq - 1]  # (H, nt, rows, K)
    pad = ex.get("key_padding")
    c0, c1 = 0, width                         # the columns the mask may touch
    if pattern is not None and full is not None and pad is None:
        whole = full[tiles[:, None], keys[:, ::block] // block].all(axis=0)   # per key chunk
        cut = np.flatnonzero(~whole)
        c0, c1 = (cut[0] * block, min(width, (cut[-1] + 1) * block)) if cut.size else (0, 0)
    allowed = None
    if pattern is not None and c1 > c0:
        allowed = np.broadcast_to(eval(pattern, {"abs": abs}, {  # noqa: S307 - pattern text
            "q": (tk - tq + qpos)[:, :, None], "k": keys[:, None, c0:c1], "n": tk}),
            (nt, rows, c1 - c0))
    if pad is not None:
        pad = pad[:, keys][:, None, :, None, :]                      # (B, 1, nt, 1, K)
        allowed = pad if allowed is None else (allowed & pad)
    if allowed is not None:
        np.copyto(s[..., c0:c1], -np.inf, where=~allowed)
    den = np.empty(s.shape[:-1] + (1,), dtype=s.dtype)
    _in_threads(lambda d, out: _softmax_rows(d, out, normalize), _rows(s), _rows(den))
    return s if normalize else (s, den)


def _softmax_rows(den, out, normalize):
    """out (N, K) <- softmax (or with `normalize` false exp(out - row max)) in place, fully
    masked rows zero; den (N, 1) <- the row sums (1 where a row has no key). Weights under
    tiny^0.8 of the row's largest (4e-31 in float32, far below its resolution) are 0: exp
    runs ~10x slower where its result is subnormal, and so does the GEMM with v where a
    weight times a value is (ALiBi puts many far keys there). Normalized, the smallest
    nonzero weight is tiny^0.8 / K: normal for any K below tiny^-0.2 (4e7 keys)."""
    m = np.max(out, axis=-1, keepdims=True)
    m[~np.isfinite(m)] = 0.0
    out -= m
    np.copyto(out, -np.inf, where=out < 0.8 * math.log(np.finfo(out.dtype).tiny))
    np.exp(out, out=out)
    np.sum(out, axis=-1, keepdims=True, out=den)
    den[den == 0] = 1.0
    if normalize:
        out /= den


def blocked_attention(q, k, v, ex, pattern, layout, scale, bias, gather):
    """softmax(q k^T * scale + bias + mask) v computed per query tile over the live key
    blocks of the layout only: extra memory O(B H block K) per step (one score buffer for
    all steps) instead of O(B H Tq Tk), work proportional to the live blocks; the mask only
    on blocks the layout does not prove whole, the normalization on the output rows. q/k
    rotated already; biases ALiBi/T5 only."""
    b, h, tq, _ = q.shape
    hk, tk, dv = v.shape[1], k.shape[2], v.shape[3]
    bo = max(b, v.shape[0])
    out = np.zeros((bo, h, tq, dv), dtype=q.dtype)
    values = blocked_bias_values(bias, ex, h, tq, tk, q.dtype)
    full = None if layout is None else _block_grid(layout[0], tq, tk, BLOCK)
    steps = blocked_steps(layout, tq, tk, bo * h, gather)
    buf = np.empty(max((bo * h * len(t) * rows * kk.shape[1] for t, kk, rows in steps),
                       default=0), dtype=q.dtype)
    for t, kk, rows in steps:
        p, den = blocked_probs(q, k, ex, pattern, scale, values, t, kk, rows, BLOCK, full, buf,
                               normalize=False)
        o = np.matmul(p.reshape(p.shape[0], hk, h // hk, *p.shape[2:]),
                      _tile_keys(v, kk)[:, :, None])
        o = o.reshape(o.shape[0], h, *o.shape[3:])                   # (B, H, nt, rows, Dv)
        if len(t) == 1:
            r0 = int(t[0]) * BLOCK
            np.divide(o[:, :, 0], den[:, :, 0], out=out[:, :, r0:r0 + rows])
        else:
            out[:, :, t[:, None] * BLOCK + np.arange(rows)[None, :]] = o / den
    return out


GEMM_FLOPS = 185e9            # fp32 GEMM practical peak of the reference 2-core machine
COPY_BYTES = 30e9             # memory copy bandwidth of the same machine
STEP_SECONDS = 2e-4           # fixed cost of one blocked step (gathers, masks, Python)


def blocked_supported(score, bias, extras):
    """The blocked kernels handle dot/scaled/bilinear scores with ALiBi/T5 biases (and key
    padding, rope, grouped heads); anything else runs dense."""
    return score != "additive" and all(t[0] in ("alibi", "t5") for t in bias)


def attention_costs(b, h, hk, tq, tk, d, dv, layout, itemsize, masked, supported=True):
    """Estimated cost of each implementation for these sizes: name -> (flops, extra peak
    bytes, seconds). Seconds = flops / GEMM peak + bytes the softmax passes touch / copy
    bandwidth + a fixed cost per blocked step. The kernels choose with this same model."""
    per_score = 2 * (d + dv)
    dense_scores = b * h * tq * tk
    costs = {"dense": (dense_scores * (per_score + 5),
                       dense_scores * itemsize + (tq * tk if masked else 0),
                       dense_scores * per_score / GEMM_FLOPS
                       + 6 * dense_scores * itemsize / COPY_BYTES)}
    if not supported:
        return costs
    for name, gather in (("tiled", False), ("sparse", True)):
        scores = peak = steps = moved = 0
        for tiles, keys, rows in blocked_plan(layout, tq, tk, BLOCK, gather):
            per_tile = max(1, TILE_ELEMENTS // max(1, b * h * rows * keys.shape[1]))
            chunk = min(per_tile, len(tiles))
            gathered = b * hk * chunk * keys.shape[1] * (d + dv)    # the step's K and V
            scores += b * h * len(tiles) * rows * keys.shape[1]
            rows_q_out = b * h * chunk * rows * (d + 2 * dv)        # q's rows, o, o / den
            peak = max(peak, b * h * chunk * rows * keys.shape[1] + rows_q_out
                       + (gathered if gather else 0))    # 'tiled' reads K, V as views
            steps += -(-len(tiles) // per_tile)
            moved += gathered * -(-len(tiles) // per_tile)
        costs[name] = (scores * (per_score + 5), peak * itemsize,
                       scores * per_score / GEMM_FLOPS
                       + (6 * scores + moved) * itemsize / COPY_BYTES + steps * STEP_SECONDS)
    return costs


def attention_impl(impl, q, k, v, layout, score, bias, extras, pattern):
    """The implementation that runs for these arrays (`attention_choice`); batch
    broadcasting between q and k/v runs dense."""
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        return "dense"
    return attention_choice(impl, max(q.shape[0], k.shape[0]), q.shape[1], k.shape[1],
                            q.shape[2], k.shape[2], q.shape[3], v.shape[3], q.dtype.itemsize,
                            layout, pattern is not None, blocked_supported(score, bias, extras))


def attention_choice(impl, b, h, hk, tq, tk, d, dv, itemsize, layout, masked, supported):
    """`impl` when forced (and the variant has a blocked kernel), else the cheapest by
    `attention_costs` (ties: less memory)."""
    if impl != "auto":
        return impl if supported else "dense"
    costs = attention_costs(b, h, hk, tq, tk, d, dv, layout, itemsize, masked, supported)
    return min(costs, key=lambda name: (costs[name][2], costs[name][1]))


# -- linear (kernelized) attention: feature maps, chunked prefix sums -------------------------

LINEAR_CHUNK = 64              # causal form: queries per chunk (ops.LINEAR_ATTENTION_CHUNK)
LINEAR_EPS = 1e-6              # added to the normalizer phi(q) . sum phi(k)


def _favor_matrix(m, d, seed):
    """Performer's orthogonal random features (m, D), float64 NumPy on every backend:
    blocks of D orthonormal rows (QR of a Gaussian matrix), each row scaled to the norm of
    a Gaussian D-vector. Drawn once per (m, D, seed), not per call."""
    memo = _favor_matrix.__dict__.setdefault("memo", {})
    if (m, d, seed) not in memo:
        import numpy as host  # NumPy's generator even where `np` is CuPy
        rng = host.random.default_rng(seed)
        blocks = [host.linalg.qr(rng.standard_normal((d, d)))[0].T for _ in range(-(-m // d))]
        w = host.concatenate(blocks)[:m]
        memo[(m, d, seed)] = w * host.linalg.norm(rng.standard_normal((m, d)), axis=1)[:, None]
    return memo[(m, d, seed)]


def _phi(x, fmap, scale, query):
    """Feature map of queries or keys (..., T, D) -> (..., T, m), and the favor matrix.
    favor keys: exp(-|w_i - x'|^2 / 2) / sqrt(m) = exp(w_i.x' - |x'|^2/2 - |w_i|^2/2) / sqrt(m);
    favor queries: exp(w_i.q' + |w_i|^2/2 - max_i) / sqrt(m): the per-query constants cancel
    in the normalized output, so phi(q).phi(k) is exp(scale q.k) up to them."""
    if fmap[0] == "elu_plus_one":
        return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0))), None
    w = np.asarray(_favor_matrix(fmap[1], x.shape[-1], fmap[2])).astype(x.dtype)   # (m, D)
    xs = x * x.dtype.type(math.sqrt(scale))
    a = np.matmul(xs, w.T)                                                       # (..., T, m)
    half = 0.5 * np.sum(w * w, axis=1)
    if query:
        a += half
        a -= np.max(a, axis=-1, keepdims=True)
    else:
        a -= half
        a -= 0.5 * np.sum(xs * xs, axis=-1, keepdims=True)
    return np.exp(a) / x.dtype.type(math.sqrt(fmap[1])), w


def _phi_vjp(x, phi, w, g, fmap, scale, query):
    """The cotangent of x given phi's (the favor queries' max is a constant: it cancels)."""
    if fmap[0] == "elu_plus_one":
        return g * np.where(x > 0, 1, phi)
    gp = g * phi                                                                 # (..., T, m)
    dxs = np.matmul(gp, w)
    if not query:
        dxs -= x * x.dtype.type(math.sqrt(scale)) * np.sum(gp, axis=-1, keepdims=True)
    return dxs * x.dtype.type(math.sqrt(scale))


def _swap(x):
    return np.swapaxes(x, -1, -2)


def _causal_product(a, b, c, state=None):
    """out[t] = a[t] . (state + sum_{j <= t} b[j] c[j]^T) along axis -2, in chunks of
    LINEAR_CHUNK (extra memory O(T * chunk)); a (..., T, m), b (..., T, m), c (..., T, n),
    leading axes broadcast. Returns out (..., T, n) and the final state (..., m, n)."""
    t = a.shape[-2]
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2], c.shape[:-2])
    out = np.empty(lead + (t, c.shape[-1]), dtype=np.result_type(a, c))
    for s in range(0, t, LINEAR_CHUNK):
        ac, bc, cc = a[..., s:s + LINEAR_CHUNK, :], b[..., s:s + LINEAR_CHUNK, :], \
            c[..., s:s + LINEAR_CHUNK, :]
        o = np.matmul(np.tril(np.matmul(ac, _swap(bc))), cc)                   # (..., C, n)
        if state is not None:
            o = o + np.matmul(ac, state)
        out[..., s:s + LINEAR_CHUNK, :] = o
        update = np.matmul(_swap(bc), cc)                                      # (..., m, n)
        state = update if state is None else state + update
    return out, state


def _linear_operands(q, k, v, pad, fmap, scale):
    """phi(q) grouped (B, Hk, G, Tq, m), phi(k) (B, Hk, 1, Tk, m) with padded keys zeroed,
    [v, 1] (B, Hk, 1, Tk, Dv + 1), plus the raw features and the favor matrix."""
    hk = k.shape[1]
    pq, w = _phi(q, fmap, scale, True)
    pk, _ = _phi(k, fmap, scale, False)
    pkm = pk if pad is None else pk * pad[:, None, :, None]
    v1 = np.concatenate([v, np.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)
    a = pq.reshape(pq.shape[0], hk, pq.shape[1] // hk, *pq.shape[2:])
    return a, pkm[:, :, None], v1[:, :, None], pq, pk, w


def _linear_numden(a, b, c, causal, state=None):
    """[numerator, normalizer] (B, Hk, G, Tq, Dv + 1) and the final key state; causal
    queries are the last Tq of the Tk positions."""
    if not causal:
        return np.matmul(a, np.matmul(_swap(b), c)), None
    off = b.shape[-2] - a.shape[-2]
    if off:
        pre = np.matmul(_swap(b[..., :off, :]), c[..., :off, :])
        state = pre if state is None else state + pre
    return _causal_product(a, b[..., off:, :], c[..., off:, :], state)


def _linear_den(n, fmap):
    """The normalizer (..., 1): + LINEAR_EPS for elu+1 (Katharopoulos et al.); favor's has
    an arbitrary per-query scale (its stabilizer), so no eps — a row whose keys all vanish
    (padding, underflow) divides by 1 and, its numerator being 0, gives 0."""
    if fmap[0] == "elu_plus_one":
        return n[..., -1:] + LINEAR_EPS
    den = n[..., -1:]
    return np.where(den > 0, den, 1)


def _linear_out(n, fmap, q, v):
    """Numerator over normalizer, (B, Hk, G, Tq, Dv) back to (B, H, Tq, Dv)."""
    out = n[..., :-1] / _linear_den(n, fmap)
    return out.reshape(out.shape[0], q.shape[1], q.shape[2], v.shape[-1])


def op_linear_attention(q, k, v, key_padding=None, *, feature_map, causal, scale, has_padding):
    a, b, c, _, _, _ = _linear_operands(q, k, v, key_padding, feature_map, scale)
    n, _ = _linear_numden(a, b, c, causal)
    return _linear_out(n, feature_map, q, v)


def op_linear_attention_cached(cache, key, q, k, v, key_padding=None, *, feature_map, causal,
                               scale, has_padding):
    """Decoding step of causal linear attention: the recurrent state (sum of phi(k) [v, 1]^T
    over past keys, (B, Hk, 1, m, Dv + 1)) replaces a KV cache; O(1) memory per step."""
    a, b, c, _, _, _ = _linear_operands(q, k, v, key_padding, feature_map, scale)
    n, cache[key] = _causal_product(a, b, c, cache.get(key))
    return _linear_out(n, feature_map, q, v)


# -- mixture of experts: routing, dispatch, grouped linear layers, combine --------------------

def _moe_route(probs, top_k, capacity_factor, training):
    """The routing (see `attndsl.ir.ops`), computed in NumPy on every backend from router
    probabilities (N, E): int64 [3, k N] of (expert, dispatch row, kept) per assignment
    a = j N + n, capacity applying while training."""
    import numpy as host
    p = host.asarray(probs.get() if hasattr(probs, "get") else probs)
    n, e = p.shape
    experts = host.argsort(-p, axis=1, kind="stable")[:, :top_k].T.reshape(-1)  # (k N,)
    order = host.argsort(experts, kind="stable")                 # grouped by expert
    total = host.bincount(experts, minlength=e)
    rank = host.empty(len(experts), dtype=host.int64)
    rank[order] = host.arange(len(experts)) - (host.cumsum(total) - total)[experts[order]]
    kept = rank < (math.ceil(capacity_factor * top_k * n / e) if training else len(rank))
    rows = host.concatenate([order[kept[order]], order[~kept[order]]])
    row = host.empty_like(rows)
    row[rows] = host.arange(len(rows))
    return host.stack([experts, row, kept.astype(host.int64)])


def _moe_gates(probs, route, top_k, normalize):
    """(N, k) gates of the kept assignments: the chosen experts' probabilities, renormalized
    over the top_k when `normalize`; zero where an assignment was dropped."""
    n = probs.shape[0]
    g = np.take_along_axis(probs, route[0].reshape(top_k, n).T, axis=1)
    if normalize:
        g = g / np.sum(g, axis=1, keepdims=True)
    return g * (route[2] > 0).reshape(top_k, n).T                     # bool: keeps the dtype


def op_moe_route(probs, *, top_k, capacity_factor, training=False):
    return np.asarray(_moe_route(probs, top_k, capacity_factor, training))


def op_moe_dispatch(x, route):
    kept = route[2] > 0
    out = np.zeros((route.shape[1], x.shape[1]), dtype=x.dtype)
    out[route[1][kept]] = x[(np.arange(route.shape[1]) % x.shape[0])[kept]]
    return out


def op_moe_counts(route, *, experts):
    return np.bincount(route[0][route[2] > 0], minlength=experts)


def op_moe_combine(y, probs, route, *, top_k, normalize):
    picked = y[route[1]].reshape(top_k, probs.shape[0], y.shape[1])   # (k, N, d)
    return np.einsum("knd,nk->nd", picked, _moe_gates(probs, route, top_k, normalize))


def op_moe_aux(probs, route, *, top_k):
    n, e = probs.shape
    f = np.bincount(route[0], minlength=e) / n                         # (E,)
    return np.asarray(e * np.sum(f * np.mean(probs, axis=0)), dtype=probs.dtype)


def op_moe_dropped(route):
    return np.asarray(1.0 - np.mean(route[2]), dtype=DTYPE)


def op_grouped_linear(x, counts, w, b=None, *, has_bias):
    out = np.zeros((x.shape[0], w.shape[1]), dtype=x.dtype)
    start = 0
    for e, c in enumerate(np.asarray(counts).tolist()):
        if c:
            seg = np.matmul(x[start:start + c], w[e].T)              # (c, out)
            if b is not None:
                seg += b[e]
            out[start:start + c] = seg
        start += c
    return out


# -- convolution along time (channels last) -------------------------------------------------

def op_conv1d(x, w, b=None, *, pad_left, pad_right, groups, has_bias):
    """One grouped product per kernel tap: memory O(B T C), no im2col buffer."""
    bsz, _, c = x.shape
    out, per, k = w.shape
    xp = np.pad(x, ((0, 0), (pad_left, pad_right), (0, 0)))
    t = xp.shape[1] - k + 1
    wg = w.reshape(groups, out // groups, per, k)
    y = np.zeros((bsz, t, groups, out // groups), dtype=x.dtype)
    for tap in range(k):
        xs = xp[:, tap:tap + t].reshape(bsz, t, groups, per)
        y += np.einsum("btgc,goc->btgo", xs, wg[..., tap])
    y = y.reshape(bsz, t, out)
    return y if b is None else y + b


# -- Reformer LSH attention (shared QK, hashed buckets, sorted chunks) ---------------------------

LSH_SELF = -1e5        # a position's score for itself: it wins only when nothing else is allowed
LSH_MASKED = -1e9      # other bucket, later position (causal), padding


def _lsh_rotations(heads, d, buckets, rounds, seed):
    """Random rotations (R, H, D, buckets / 2), float64 NumPy on every backend; drawn once
    per shape and seed, not per call."""
    memo = _lsh_rotations.__dict__.setdefault("memo", {})
    key = (heads, d, buckets, rounds, seed)
    if key not in memo:
        import numpy as host
        memo[key] = host.random.default_rng(seed).standard_normal(
            (rounds, heads, d, buckets // 2))
    return memo[key]


def _take(x, idx):
    """x (B, H, [R,] T, F) gathered along T by idx (B, H, R, T) -> (B, H, R, T, F)."""
    if x.ndim == 4:
        x = x[:, :, None]
    return np.take_along_axis(x, idx[..., None], axis=-2)


def _chunks(x, c):
    """(..., T, F) -> (..., T / c, c, F)."""
    return x.reshape(*x.shape[:-2], x.shape[-2] // c, c, x.shape[-1])


def _window(x):
    """Keys of each chunk: the chunk before it, then itself (the first chunk's "before" is
    the last), along the chunk-position axis: (..., n, c, F) -> (..., n, 2c, F); one chunk
    alone is its own window."""
    if x.shape[-3] == 1:
        return x
    return np.concatenate([np.roll(x, 1, axis=-3), x], axis=-2)


def _lsh_forward(q, v, pad, lsh, scale):
    """Everything the output and its gradient need, in sorted-chunk space per round."""
    buckets, rounds, chunk, causal, seed = lsh
    bsz, h, t, d = q.shape
    tp = -(-t // chunk) * chunk
    if tp != t:
        q = np.pad(q, ((0, 0), (0, 0), (0, tp - t), (0, 0)))
        v = np.pad(v, ((0, 0), (0, 0), (0, tp - t), (0, 0)))
    norm = np.maximum(np.sqrt(np.sum(q * q, axis=-1, keepdims=True)), 1e-6)
    k = q / norm                                                           # shared QK
    rot = np.asarray(_lsh_rotations(h, d, buckets, rounds, seed)).astype(q.dtype)
    proj = np.einsum("bhtd,rhdn->bhrtn", k, rot)
    bucket = np.argmax(np.concatenate([proj, -proj], axis=-1), axis=-1)    # (B, H, R, Tp)
    pos = np.arange(tp)
    valid = np.broadcast_to(pos < t, (bsz, tp))
    if pad is not None:
        valid = valid & np.pad(pad, ((0, 0), (0, tp - t)))
    bucket = np.where(valid[:, None, None, :], bucket, buckets)           # padding sorts last
    perm = np.argsort(bucket * tp + pos, axis=-1)                          # (B, H, R, Tp)
    c = min(chunk, tp)
    qs, ks, vs = (_chunks(_take(x, perm), c) for x in (q, k, v))           # (B, H, R, n, c, F)
    ps = _chunks(perm[..., None], c)[..., 0]                               # positions
    bs = _chunks(np.take_along_axis(bucket, perm, axis=-1)[..., None], c)[..., 0]
    vk = _chunks(np.take_along_axis(np.broadcast_to(valid[:, None, None, :], perm.shape),
                                    perm, axis=-1)[..., None], c)[..., 0]
    kw, vw, pw, bw, vkw = (_window(x) for x in (ks, vs, ps[..., None], bs[..., None],
                                                vk[..., None]))
    pw, bw, vkw = pw[..., 0], bw[..., 0], vkw[..., 0]
    allowed = (bs[..., :, None] == bw[..., None, :]) & vkw[..., None, :]
    if causal:
        allowed &= pw[..., None, :] <= ps[..., :, None]
    self_ = pw[..., None, :] == ps[..., :, None]
    s = np.matmul(qs, np.swapaxes(kw, -1, -2)) * q.dtype.type(scale)        # (..., c, w)
    s = np.where(allowed & ~self_, s, LSH_MASKED)
    s = np.where(self_ & allowed, LSH_SELF, s)
    m = np.max(s, axis=-1, keepdims=True)
    p = np.exp(s - m)
    total = np.sum(p, axis=-1, keepdims=True)
    p /= total
    lse = (m + np.log(total))[..., 0]                                      # (..., n, c)
    o = np.matmul(p, vw)                                                   # (..., n, c, Dv)
    inv = np.argsort(perm, axis=-1)
    o_r = np.take_along_axis(o.reshape(*perm.shape, -1), inv[..., None], axis=-2)
    lse_r = np.take_along_axis(lse.reshape(perm.shape), inv, axis=-1)     # (B, H, R, Tp)
    w = np.exp(lse_r - np.max(lse_r, axis=2, keepdims=True))
    w /= np.sum(w, axis=2, keepdims=True)
    out = np.sum(w[..., None] * o_r, axis=2)                               # (B, H, Tp, Dv)
    return {"out": out, "o_r": o_r, "w": w, "p": p, "qs": qs, "kw": kw, "vw": vw, "k": k,
            "norm": norm, "perm": perm, "inv": inv, "free": allowed & ~self_, "t": t, "c": c}


def op_lsh_attention(q, v, key_padding=None, *, lsh, scale, has_padding):
    return _lsh_forward(q, v, key_padding, lsh, scale)["out"][:, :, :q.shape[2]]


# -- batch normalization ----------------------------------------------------------------------

def _batch_stats(x):
    """Mean and biased variance per channel over every axis but the last."""
    x2 = x.reshape(-1, x.shape[-1])
    mean = np.mean(x2, axis=0)
    return mean, np.mean((x2 - mean) ** 2, axis=0)


def op_batch_norm(x, running_mean, running_var, weight=None, bias=None, *, eps, momentum,
                  affine, training=False):
    """Inference: the running statistics (the NumPy forward); training statistics are the
    interpreter's (`numpy_autodiff`), which also moves the buffers."""
    mean, var = _batch_stats(x) if training else (running_mean, running_var)
    y = (x - mean) / np.sqrt(var + x.dtype.type(eps))
    return y * weight + bias if affine else y
