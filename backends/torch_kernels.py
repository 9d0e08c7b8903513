"""PyTorch kernels, one per op: `op_<name>(*inputs, **attrs)`, differentiable by autograd.

Ops that create tensors take `device` and `fdtype` (the program's float dtype); ops whose
behaviour differs in training (dropout, attention dropout) take `training`. Attention goes
to `F.scaled_dot_product_attention` (fused kernels where the pattern allows).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from attndsl.backends.numpy_kernels import (
    BLOCK,
    LSH_MASKED,
    LSH_SELF,
    _favor_matrix,
    _lsh_rotations,
    _moe_route,
    attention_costs,
    blocked_plan,
    blocked_steps,
)

CAUSAL = "(k <= q)"
_MASKS: dict = {}


def op_constant(*, value, dtype, device, fdtype):
    return value


def op_arange(*, n, offset, device, fdtype):
    return torch.arange(offset, offset + n, device=device)


def op_size(*, value, device, fdtype):
    return value


def op_sinusoidal(*, n, dim, offset, device, fdtype):
    pos = torch.arange(offset, offset + n, dtype=torch.float64, device=device)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=device)
                    * (-math.log(10000.0) / dim))
    table = torch.empty(n, dim, dtype=torch.float64, device=device)      # (n, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table.to(fdtype)


def op_add(a, b):
    # a Python number first as the tensor's partner (the ONNX exporter cannot take
    # aten.mul(0.5, t), only aten.mul(t, 0.5))
    return torch.add(b, a) if not isinstance(a, torch.Tensor) else torch.add(a, b)


def op_sub(a, b):
    return torch.rsub(b, a) if not isinstance(a, torch.Tensor) else torch.sub(a, b)


def op_mul(a, b):
    return torch.mul(b, a) if not isinstance(a, torch.Tensor) else torch.mul(a, b)


def op_div(a, b):
    return torch.true_divide(torch.as_tensor(a), b)


def op_logical_and(a, b):
    return torch.logical_and(torch.as_tensor(a), torch.as_tensor(b))


def op_logical_or(a, b):
    return torch.logical_or(torch.as_tensor(a), torch.as_tensor(b))


def op_logical_not(x):
    return torch.logical_not(torch.as_tensor(x))


def op_pow(a, b):
    return torch.pow(a, b)


def op_maximum(a, b):
    return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))


def op_minimum(a, b):
    return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))


def op_less(a, b):
    return torch.lt(a, b)


def op_greater(a, b):
    return torch.gt(a, b)


def op_equal(a, b):
    return torch.eq(a, b)


def op_neg(x):
    return torch.neg(x)


def op_exp(x):
    return torch.exp(x)


def op_log(x):
    return torch.log(x)


def op_sqrt(x):
    return torch.sqrt(x)


def op_tanh(x):
    return torch.tanh(x)


def op_abs(x):
    return torch.abs(x)


def op_sin(x):
    return torch.sin(x)


def op_cos(x):
    return torch.cos(x)


def op_sign(x):
    return torch.sign(x)


def op_softplus(x):
    return F.softplus(x)


def op_clip(x, *, lo, hi):
    return torch.clamp(x, lo, hi)


def op_sigmoid(x):
    return torch.sigmoid(x)


def op_relu(x):
    return F.relu(x)


def op_silu(x):
    return F.silu(x)


def op_gelu(x, *, approximate):
    return F.gelu(x, approximate=approximate)


def op_cast(x, *, dtype, device, fdtype):
    return torch.as_tensor(x, device=device).to(
        {"float": fdtype, "int": torch.int64, "bool": torch.bool}[dtype])


def op_dropout(x, *, p, training):
    return F.dropout(x, p, training) if p > 0 else x


def op_layer_drop(x, y, *, p, training):
    """While training, skip the layer (return its input) with probability p."""
    if training and p > 0 and float(torch.rand(())) < p:
        return x
    return y


def op_where(cond, a, b):
    return torch.where(cond, a, b)


def op_matmul(a, b):
    return torch.matmul(a, b)


def op_linear(x, w, b=None, *, has_bias, activation=None):
    y = F.linear(x, w, b)
    if activation is None:
        return y
    if activation == "relu":
        return F.relu(y)
    if activation == "silu":
        return F.silu(y)
    return F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")


def op_linear_int8(x, w, scale, b=None, *, has_bias):
    # dequantize-then-GEMM: on CPU as fast as float32 for many rows (torch's int8 pack
    # kernel measured 40x slower at 768 rows here), and it exports to ONNX
    y = F.linear(x, w.to(x.dtype)) * scale.to(x.dtype)
    return y if b is None else y + b


def op_transpose(x, *, perm):
    return x.permute(perm)


def op_reshape(x, *, shape):
    return x.reshape(shape)


def op_sum(x, *, axes, keepdims):
    return torch.sum(x, dim=axes, keepdim=keepdims)


def op_mean(x, *, axes, keepdims):
    return torch.mean(x, dim=axes, keepdim=keepdims)


def op_max(x, *, axes, keepdims):
    return torch.amax(x, dim=axes, keepdim=keepdims)


def op_min(x, *, axes, keepdims):
    return torch.amin(x, dim=axes, keepdim=keepdims)


def op_cumsum(x, *, axis):
    return torch.cumsum(x, dim=axis)


def op_one_hot(ids, *, n, device, fdtype):
    return F.one_hot(ids, n).to(fdtype)


def op_top_k_indices(x, *, k, axis):
    return torch.sort(x, dim=axis, descending=True, stable=True).indices.narrow(axis, 0, k)


def op_gather(x, index, *, axis):
    n = x.shape[axis]
    # range checks read values: skipped while torch.export traces (ONNX export)
    if index.numel() and not torch.compiler.is_compiling() and (
            int(index.min()) < -n or int(index.max()) >= n):
        raise IndexError(f"gather index out of range [0, {n}) along axis {axis}")
    return torch.gather(x, axis, index % n)


def op_concat(*xs, axis):
    return torch.cat(xs, dim=axis)


def op_expand(x, *, shape):
    return x.expand(shape)


def op_index(x, *, index):
    return x[tuple(i if isinstance(i, int) else slice(*i) for i in index)]


def op_softmax(x, *, axis):
    return torch.softmax(x, dim=axis)


def op_layer_norm(x, g=None, b=None, *, eps, has_bias):
    return F.layer_norm(x, (x.shape[-1],), g, b, eps)


def op_add_layer_norm(a, r, g=None, b=None, *, eps, has_bias):
    return F.layer_norm(a + r, (a.shape[-1],), g, b, eps)


def op_rms_norm(x, g, b=None, *, eps):
    y = F.rms_norm(x, (x.shape[-1],), g, eps)
    return y if b is None else y + b


def op_embedding(table, ids):
    if ids.numel() and not torch.compiler.is_compiling():  # not while torch.export traces
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= table.shape[0]:
            raise IndexError(f"embedding id {lo if lo < 0 else hi} is out of range "
                             f"[0, {table.shape[0]})")
    return F.embedding(ids, table)


def attention_mask(pattern, tq, tk, device):
    """Boolean [tq, tk] mask (queries are the last tq of tk positions); the 16 most recently
    used are kept (none while torch.export traces: the sizes are symbols then)."""
    tracing = torch.compiler.is_compiling()
    key = (pattern, tq, tk, str(device))
    mask = None if tracing else _MASKS.pop(key, None)
    if mask is None:
        q = torch.arange(tk - tq, tk, device=device)[:, None]
        k = torch.arange(tk, device=device)[None, :]
        mask = eval(pattern, {"abs": abs}, {"q": q, "k": k, "n": tk})  # noqa: S307
    if tracing:
        return mask
    _MASKS[key] = mask
    while len(_MASKS) > 16:
        del _MASKS[next(iter(_MASKS))]
    return mask


def _rope_inv_freq(rope, device):
    """Inverse frequencies (dims/2,) in float64 after the rope's scaling."""
    theta, dims, _, scaling = rope
    if scaling[0] == "ntk":
        theta = theta * scaling[1] ** (dims / (dims - 2))
    inv = 1.0 / theta ** (torch.arange(0, dims, 2, dtype=torch.float64, device=device) / dims)
    if scaling[0] == "linear":
        inv = inv / scaling[1]
    elif scaling[0] == "llama3":
        factor, low, high, old = scaling[1:]
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        medium = (wavelen <= old / low) & (wavelen >= old / high)
        inv = torch.where(medium, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return inv


def _rope_tables(x, offset, rope):
    """cos and sin (T, dims/2) of the rotation angles at positions offset..offset+T-1."""
    pos = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64, device=x.device)
    ang = pos[:, None] * _rope_inv_freq(rope, x.device)[None, :]          # (T, dims/2)
    return torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)


def _rope(x, offset, rope):
    """Rotate the first `dims` features of x (B, H, T, D) at positions offset..offset+T-1
    (out of place: autograd may record it)."""
    _, dims, layout, _ = rope
    cos, sin = _rope_tables(x, offset, rope)
    if layout == "half":
        x1, x2, rest = x[..., :dims // 2], x[..., dims // 2:dims], x[..., dims:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)
    x1, x2, rest = x[..., 0:dims:2], x[..., 1:dims:2], x[..., dims:]
    pairs = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # (..., dims/2, 2)
    return torch.cat([pairs.flatten(-2), rest], dim=-1)


def _rope_(x, offset, rope):
    """`_rope` overwriting x, ROPE_ROWS positions at a time (the same products, so the same
    numbers; temporaries of one block)."""
    _, dims, layout, _ = rope
    cos, sin = _rope_tables(x, offset, rope)
    first, second = ((slice(0, dims // 2), slice(dims // 2, dims)) if layout == "half"
                     else (slice(0, dims, 2), slice(1, dims, 2)))
    for t in range(0, x.shape[-2], ROPE_ROWS):
        rows = slice(t, t + ROPE_ROWS)
        x1, x2 = x[..., rows, first], x[..., rows, second]
        c, s = cos[rows], sin[rows]
        x1s = x1 * s
        x1.mul_(c).sub_(x2 * s)
        x2.mul_(c).add_(x1s)
    return x


ROPE_ROWS = 256   # positions per block of the in-place rotation


def _alibi_slopes(heads, device):
    """Press et al.'s head slopes (see the NumPy kernel)."""
    def power_of_two(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    lower = 2 ** int(math.floor(math.log2(heads)))
    slopes = power_of_two(lower)
    if lower != heads:
        slopes += power_of_two(2 * lower)[0::2][:heads - lower]
    return torch.tensor(slopes, dtype=torch.float64, device=device)


def _t5_buckets(rel, buckets, max_distance, bidirectional):
    """Raffel et al.'s bucket of each relative position rel = key - query (int tensor)."""
    out = torch.zeros_like(rel)
    if bidirectional:
        buckets //= 2
        out = out + (rel > 0).long() * buckets
        n = rel.abs()
    else:
        n = -torch.clamp(rel, max=0)
    exact = buckets // 2
    log = torch.log(n.clamp(min=1).double() / exact) / math.log(max_distance / exact)
    large = torch.clamp(exact + (log * (buckets - exact)).long(), max=buckets - 1)
    return out + torch.where(n < exact, n, large)


def _bias_block(q, ex, bias, scale, heads, r0, r1, tq, tk):
    """The summed bias terms for query rows r0..r1: broadcastable to (B, H, r1 - r0, Tk)."""
    device = q.device
    rel = (torch.arange(tk, device=device)[None, :]
           - torch.arange(tk - tq + r0, tk - tq + r1, device=device)[:, None])   # (R, Tk)
    out = None
    for i, term in enumerate(bias):
        t = ex.get(f"bias{i}")
        if term[0] == "alibi":
            add = (-_alibi_slopes(heads, device)[:, None, None] * rel.abs()).to(q.dtype)
        elif term[0] == "t5":
            add = t[_t5_buckets(rel, *term[1:])].permute(2, 0, 1)        # (H, R, Tk)
        elif term[0] == "relative":
            idx = torch.clamp(rel, -term[1], term[1]) + term[1]            # (R, Tk)
            qa = torch.matmul(q[:, :, r0:r1], t.transpose(0, 1)) * scale   # (B, H, R, 2k+1)
            add = torch.gather(qa, -1, idx.expand(*qa.shape[:2], *idx.shape))
        else:
            add = t if t.dim() < 2 or t.shape[-2] == 1 else t[..., r0:r1, :]
        out = add if out is None else out + add
    return out


def _explicit_probs(q, k, qr, ex, pattern, scale, score, bias):
    """softmax(score(q, k) + bias + mask), (B, H, Tq, Tk), fully masked rows zero: the path
    for what SDPA cannot express (additive scores, Shaw's relative term, the weights). `q` is
    the query the score reads (q W for bilinear), `qr` the rotated query Shaw's term reads."""
    b, h, tq, _ = q.shape
    hk, tk = k.shape[1], k.shape[2]
    if score == "additive":
        qa = torch.matmul(q, ex["score_wq"].T).reshape(b, hk, h // hk, tq, 1, -1)
        ka = torch.matmul(k, ex["score_wk"].T)[:, :, None, None]           # (B, Hk, 1, 1, Tk, A)
        s = torch.matmul(torch.tanh(qa + ka), ex["score_v"]).reshape(b, h, tq, tk) * scale
    else:
        s = torch.matmul(q.reshape(b, hk, (h // hk) * tq, -1), k.transpose(-1, -2))
        s = s.reshape(-1, h, tq, tk) * scale                               # (B, H, Tq, Tk)
    if bias:
        s = s + _bias_block(qr, ex, bias, scale, h, 0, tq, tq, tk)
    mask = _full_mask(ex, pattern, tq, tk, q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = _softmax_flushed(s)
    return p if mask is None else p.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)


def _full_mask(ex, pattern, tq, tk, device):
    """Boolean mask broadcastable to (B, H, Tq, Tk) from the pattern and key padding."""
    mask = None if pattern is None else attention_mask(pattern, tq, tk, device)
    pad = ex.get("key_padding")
    if pad is not None:
        pad = pad[:, None, None, :]                                        # (B, 1, 1, Tk)
        mask = pad if mask is None else (mask & pad)
    return mask


def _grouped_pv(p, v):
    """p (B, H, Tq, Tk) @ v (B, Hk, Tk, Dv) with query heads sharing kv heads."""
    b, h, tq, tk = p.shape
    out = torch.matmul(p.reshape(b, v.shape[1], -1, tk), v)               # (B, Hk, G Tq, Dv)
    return out.reshape(b, h, tq, v.shape[-1])


def _biased_rows(q, k, v, ex, pattern, layout, scale, bias, p):
    """Biased attention per tile of query rows over the span of its live key blocks (the
    pattern's layout): the ALiBi/T5 values of each relative position computed once and
    gathered per tile, plus any tensor bias, pattern and padding; an explicit softmax with
    subnormals flushed (SDPA with a float mask runs the same tiles 2x slower on CPU). No
    [H, Tq, Tk] tensor is materialized; rows without a key give zeros."""
    b, h, tq, d = q.shape
    hk, tk = k.shape[1], k.shape[2]
    rel = [t for t in bias if t[0] in ("alibi", "t5")]
    values = sum(_relative_values(t, ex.get(f"bias{i}"), h, tq, tk, q.device, q.dtype)
                 for i, t in enumerate(bias) if t in rel) if rel else None
    tensors = [ex[f"bias{i}"] for i, t in enumerate(bias) if t[0] == "tensor"]
    pad = ex.get("key_padding")
    outs, positions = [], []
    for tiles, keys, rows in blocked_plan(layout, tq, tk, BLOCK, False):
        r0, k0, k1 = int(tiles[0]) * BLOCK, int(keys[0, 0]), int(keys[0, -1]) + 1
        qpos = torch.arange(r0, r0 + rows, device=q.device)
        kpos = torch.arange(k0, k1, device=q.device)
        qt = q[:, :, r0:r0 + rows].reshape(b, hk, (h // hk) * rows, d)
        s = torch.matmul(qt, k[:, :, k0:k1].transpose(-1, -2))            # (B, Hk, G rows, K)
        s = s.reshape(-1, h, rows, k1 - k0) * scale                        # (B, H, rows, K)
        if values is not None:
            s = s + values[:, kpos[None, :] - qpos[:, None] + tq - 1]     # (H, rows, K)
        for t in tensors:
            t = t if t.dim() < 2 or t.shape[-2] == 1 else t[..., r0:r0 + rows, :]
            s = s + (t if t.shape[-1] == 1 else t[..., k0:k1])
        allowed = None
        if pattern is not None:
            allowed = eval(pattern, {"abs": abs}, {  # noqa: S307 - pattern text
                "q": (tk - tq + qpos)[:, None], "k": kpos[None, :], "n": tk})
        if pad is not None:
            allowed = pad[:, None, None, k0:k1] if allowed is None else (
                allowed & pad[:, None, None, k0:k1])
        outs.append(_grouped_pv(_masked_probs(s, allowed, p), v[:, :, k0:k1]))
        positions.append(qpos)
    return _assemble(outs, positions, q, v, tq)


def _masked_probs(s, allowed, p):
    """softmax over the keys `allowed` (None: all), rows with no allowed key zero, then
    dropout with probability p."""
    live = None
    if allowed is not None:
        live = allowed.any(dim=-1, keepdim=True)                            # rows with a key
        s = s.masked_fill(~(allowed | ~live), float("-inf"))
    probs = _softmax_flushed(s)
    if live is not None:
        probs = probs.masked_fill(~live, 0.0)
    return F.dropout(probs, p) if p > 0 else probs


def _softmax_flushed(s):
    """softmax over the last axis with subnormal probabilities set to 0: far keys under
    ALiBi land below 1.2e-38 in float32, and a GEMM reading subnormals runs ~10x slower on
    x86 CPUs (their share of a row whose largest entry is 1 is below float32's resolution)."""
    probs = torch.softmax(s, dim=-1)                    # normalized: nothing divides later
    tiny = torch.finfo(probs.dtype).tiny
    if probs.requires_grad:
        return probs.masked_fill(probs < tiny, 0.0)
    return probs.masked_fill_(probs < tiny, 0.0)


def _assemble(outs, positions, q, v, tq):
    """Concatenate per-tile outputs (B, H, rows, Dv) back into query order; rows no tile
    covered (no live key) are zeros."""
    covered = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
    missing = np.setdiff1d(np.arange(tq), covered.cpu().numpy())
    if missing.size:
        outs.append(q.new_zeros(max(q.shape[0], v.shape[0]), q.shape[1], missing.size,
                                v.shape[3]))
        covered = torch.cat([covered, torch.as_tensor(missing, device=covered.device)])
    out = torch.cat(outs, dim=2)
    return out if not missing.size and positions and bool(
        (covered[1:] > covered[:-1]).all()) else out[:, :, torch.argsort(covered)]


def op_attention(q, k, v, *extra, pattern, scale, dropout, training, score="scaled", bias=(),
                 rope=None, extras=None, rope_keys=True, impl="auto", pattern_blocks=None,
                 pattern_band=None, rope_in_place=False):
    """softmax(score(q, k) + bias + mask) v on q (B, H, Tq, D), k/v (B, Hk, Tk, D) with H a
    multiple of Hk; fully masked rows give zeros. SDPA (enable_gqa for grouped heads) for
    dot/scaled/bilinear scores with ALiBi/T5/tensor biases; an explicit path otherwise.
    `rope_in_place`: the compiler proved nothing reads q and k afterwards, so without
    autograd recording the rotation overwrites them (no rotated copies)."""
    extras = ("key_padding",) * len(extra) if extras is None else extras
    ex = {n: x for n, x in zip(extras, extra) if x is not None}
    p = dropout if training else 0.0
    tq, tk = q.shape[-2], k.shape[-2]
    tracing = torch.compiler.is_compiling()  # torch.export/compile: one path for every size
    if rope is not None:
        rotate = _rope_ if rope_in_place and not torch.is_grad_enabled() and not tracing else _rope
        q = rotate(q, tk - tq, rope)
        k = rotate(k, 0, rope) if rope_keys else k
    gqa = q.shape[1] != k.shape[1]
    flash = (q.device.type == "cpu" and not gqa and p == 0 and not tracing and tq == tk
             and v.shape[-1] == q.shape[-1] and "key_padding" not in ex)   # see _band
    if score == "additive" or any(t[0] == "relative" for t in bias) or (tracing and bias):
        qs = torch.matmul(q, ex["score_w"]) if score == "bilinear" else q
        probs = _explicit_probs(qs, k, q, ex, pattern, scale, score, bias)
        return _grouped_pv(F.dropout(probs, p, training) if p > 0 else probs, v)
    if score == "bilinear":
        q = torch.matmul(q, ex["score_w"])
    if (flash and bias == (("alibi",),) and pattern == CAUSAL and q.dtype == torch.float32
            and impl == "auto" and tq >= ALIBI_SPLIT_MIN):
        out = _alibi_split_heads(q, k, v, scale)
        if out is not None:
            return out
    if (bias == (("alibi",),) and "key_padding" not in ex and not tracing
            and ((pattern == CAUSAL and tq == tk) or (pattern in (None, CAUSAL) and tq == 1))):
        return _alibi_sdpa(q, k, v, scale, p, gqa, causal=tq > 1)
    if (flash and len(bias) == 1 and bias[0][0] == "t5" and pattern in (None, CAUSAL)
            and tq > 1 and impl == "auto" and not _records_grad(q, k, v, ex)):
        out = _t5_split_sdpa(q, k, v, ex["bias0"], bias[0], scale, pattern == CAUSAL)
        if out is not None:
            return out
    band = _narrow_band(pattern_band, tk)
    if (flash and band is not None and impl == "auto" and all(t[0] in ("alibi", "t5") for t in bias)
            and not _records_grad(*(ex[f"bias{i}"] for i, t in enumerate(bias) if t[0] == "t5"))):
        values = sum(_relative_values(t, ex.get(f"bias{i}"), q.shape[1], tq, tk, q.device,
                                      q.dtype) for i, t in enumerate(bias)) if bias else None
        return _band(q, k, v, values, scale, *band)[0]
    if not tracing and _use_blocked(impl, q, k, v, pattern, pattern_blocks, bias):
        return _blocked_attention(q, k, v, ex, pattern, pattern_blocks, scale, bias, p,
                                  impl != "tiled")
    if not bias and "key_padding" not in ex:
        if pattern is None or (pattern == CAUSAL and tq == 1):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scale,
                                                  enable_gqa=gqa)
        if pattern == CAUSAL and tq == tk:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True,
                                                  scale=scale, enable_gqa=gqa)
    if not bias:
        mask = _full_mask(ex, pattern, tq, tk, q.device)
        live = mask.any(dim=-1, keepdim=True)                             # rows with some key
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~live, dropout_p=p,
                                             scale=scale, enable_gqa=gqa)
        return out.masked_fill(~live, 0.0)
    return _biased_rows(q, k, v, ex, pattern, pattern_blocks, scale, bias, p)


def _alibi_sdpa(q, k, v, scale, p, gqa, causal, slopes=None):
    """ALiBi on SDPA's fused causal kernel. For keys j <= i, -m_h |i - j| = m_h j - m_h i, and
    the m_h i is the same for the whole row, so softmax(s q.k - m_h |i - j|) equals
    softmax(s q.k + m_h j): one more feature, q' = [q, m_h / s], k' = [k, j - (Tk - 1)] (the
    shift keeps the extra term small for float32), v padded to the same size (the fast
    kernels want one head size). No [H, T, T] bias is built, and the causal kernel skips the
    blocks above the diagonal. Without autograd recording, a few heads at a time (one K/V
    head with its query heads, or ALIBI_GROUP_HEADS), into one output: the padded copies are
    of those heads, not all (the same numbers: SDPA treats heads independently)."""
    b, h, tq, _ = q.shape
    tk, hk = k.shape[-2], k.shape[1]
    slopes = ((_alibi_slopes(h, q.device) if slopes is None else slopes) / scale
              ).to(q.dtype).view(1, h, 1, 1)
    pos = (torch.arange(tk, device=q.device, dtype=torch.float64) - (tk - 1)).to(q.dtype)
    if hk == 1 or p > 0 or _records_grad(q, k, v) or torch.compiler.is_compiling():
        return _alibi_padded(q, k, v, slopes, pos, scale, p, gqa, causal)
    g = h // hk                                  # query heads per K/V head
    step = max(1, ALIBI_GROUP_HEADS // g)        # K/V heads per call
    out = q.new_empty(max(b, v.shape[0]), h, tq, v.shape[-1])
    for j in range(0, hk, step):
        kv, heads = slice(j, j + step), slice(j * g, (j + step) * g)
        out[:, heads] = _alibi_padded(q[:, heads], k[:, kv], v[:, kv], slopes[:, heads], pos,
                                      scale, 0.0, g > 1, causal)
    return out


ALIBI_GROUP_HEADS = 2   # query heads per padded call at inference (fastest of 1-12 at T=1024)


def _alibi_padded(q, k, v, slopes, pos, scale, p, gqa, causal):
    """`_alibi_sdpa`'s SDPA call on [q, m_h / s], [k, j - (Tk - 1)], [v, 0]."""
    qa = torch.cat([q, slopes.expand(*q.shape[:3], 1)], dim=-1)
    ka = torch.cat([k, pos.view(1, 1, -1, 1).expand(*k.shape[:3], 1)], dim=-1)
    va = torch.cat([v, v.new_zeros(*v.shape[:-1], 1)], dim=-1)
    out = F.scaled_dot_product_attention(qa, ka, va, dropout_p=p, is_causal=causal, scale=scale,
                                         enable_gqa=gqa)
    return out[..., :v.shape[-1]]


def _records_grad(*tensors):
    """Whether autograd is recording through any of `tensors` (or the values of a dict)."""
    flat = [t for x in tensors for t in (x.values() if isinstance(x, dict) else [x])]
    return torch.is_grad_enabled() and any(t.requires_grad for t in flat)


def _t5_split_sdpa(q, k, v, table, term, scale, causal):
    """T5-biased attention, inference on the CPU, as SDPA's fused kernel plus a narrow band.
    T5's bucket of a relative position stops changing beyond some distance n (the last
    bucket): keys at least n before the query all get the same bias c_h, so they are plain
    causal attention over the shifted sequences q[n:], k[:T-n] (the same for keys n after
    the query on reversed sequences when bidirectional). Only the band of nearer keys needs
    the per-position bias, computed in row tiles; the parts are merged by their log-sum-exp.
    None when the band is as wide as the sequence (the caller's blocked path is then as
    cheap). Training keeps the blocked path: SDPA's log-sum-exp carries no gradient."""
    b, h, t, d = q.shape
    idx = _t5_buckets(torch.arange(-(t - 1), t, device=q.device), *term[1:])   # rel -(T-1)..T-1
    left = _constant_tail(idx[:t].flip(0))                 # keys >= `left` before: one bucket
    right = _constant_tail(idx[t - 1:]) if not causal else t
    if not 0 < min(left, right) <= t // 2:
        return None
    values = table[idx].transpose(0, 1).to(q.dtype)        # (H, 2T - 1)
    out, lse = _band(q, k, v, values, scale, left, 1 if causal else right)
    for n, c, flip in ((left, values[:, 0], False), (right, values[:, -1], True)):
        if n >= t:
            continue
        qf, kf, vf = (x.flip(2) if flip else x for x in (q, k, v))
        rows = slice(0, t - n) if flip else slice(n, t)
        for j in range(0, h, T5_GROUP_HEADS):              # a few heads: o is a copy
            hs = slice(j, j + T5_GROUP_HEADS)
            o, far = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qf[:, hs, n:], kf[:, hs, :t - n], vf[:, hs, :t - n], 0.0, True, scale=scale)
            far = far + c[hs].view(1, -1, 1)               # rows n.. (of the flipped order)
            o, far = (o.flip(2), far.flip(2)) if flip else (o, far)
            part = lse[:, hs, rows]
            total = torch.logaddexp(part, far)
            out[:, hs, rows].mul_(torch.exp(part - total)[..., None])
            out[:, hs, rows].add_(o.mul_(torch.exp(far - total)[..., None]))
            lse[:, hs, rows] = total
            del o, far
    return out


T5_GROUP_HEADS = 4   # heads per far-keys SDPA call of `_t5_split_sdpa`


def _constant_tail(idx):
    """The smallest n with idx[n:] all equal to idx[-1] (idx: buckets by growing distance)."""
    differ = torch.nonzero(idx != idx[-1])
    return int(differ[-1]) + 1 if differ.numel() else 0


BAND_ROWS = 64
BAND_CALL_ELEMENTS = 1 << 21   # window key elements (B H S D) per SDPA call (a quarter
                               # at the ends, whose padded keys and masks are copies)


def _narrow_band(band, t):
    """(before, after) of a band pattern narrow enough at length t for `_band`, else None."""
    if band is None or None in band or band[0] + band[1] - 1 > t // 2:
        return None
    return band


def _band(q, k, v, values, scale, left, right):
    """Attention of each query i over keys i - left < j < i + right with the relative biases
    `values` (H, 2T - 1) or none: (output (B, H, T, Dv), log-sum-exp (B, H, T)); the path
    for sliding windows and T5's near keys, autograd flowing to q, k, v (not `values`).
    Tiles of BAND_ROWS queries with their windows of keys (strided views of k and v, no
    copy), batched into SDPA's CPU kernel BAND_CALL_ELEMENTS window key elements at a time
    with one float mask (bias, -inf outside the band) for the tiles whose window lies inside the
    sequence; the tiles at the ends get a padded copy of their keys and their own masks."""
    b, h, t, d = q.shape
    rows, span = BAND_ROWS, BAND_ROWS + left + right - 2
    tiles = -(-t // rows)
    qt = (q if t % rows == 0 else F.pad(q, (0, 0, 0, tiles * rows - t)))
    qt = qt.view(b, h, tiles, rows, d).transpose(1, 2)                    # (B, tiles, H, R, D)
    rel = (torch.arange(span, device=q.device)[None, :] - left + 1
           - torch.arange(rows, device=q.device)[:, None])                 # (R, S)
    outside = (rel <= -left) | (rel >= right)
    mask = (q.new_zeros(1, rows, span).masked_fill(outside, float("-inf")) if values is None
            else values[:, (rel + t - 1).clamp(0, 2 * t - 2)].masked_fill(outside, float("-inf"))
            )[None]                                                       # (1, H or 1, R, S)
    first = [i * rows - left + 1 for i in range(tiles)]                    # each window's key 0
    a = sum(f < 0 for f in first)
    z = max(a, sum(f + span <= t for f in first))
    out = qt.new_empty(b, h, tiles, rows, v.shape[-1])
    lse = qt.new_empty(b, h, tiles, rows)
    per_call = max(1, BAND_CALL_ELEMENTS // (b * h * span * d))
    ends = max(1, per_call // 4)               # their keys and masks are padded copies
    calls = [(i, min(i + n, end)) for start, end, n in ((0, a, ends), (a, z, per_call),
                                                        (z, tiles, ends))
             for i in range(start, end, n)]
    for lo, hi in calls:
        k0, k1 = first[lo], first[hi - 1] + span                         # keys the tiles read
        pad = (0, 0, max(0, -k0), max(0, k1 - t))
        m = mask
        if any(pad):                                                   # windows past an end
            key = torch.arange(lo, hi, device=q.device)[:, None] * rows - left + 1 + \
                torch.arange(span, device=q.device)                            # (n, S)
            m = m.masked_fill(((key < 0) | (key >= t))[:, None, None], float("-inf"))
            m = m.repeat(b, 1, 1, 1)                                 # (B n, H, R, S)
        kw, vw = ((F.pad(x[:, :, max(k0, 0):min(k1, t)], pad) if any(pad) else x[:, :, k0:k1])
                  .unfold(2, span, rows).permute(0, 2, 1, 4, 3).flatten(0, 1)
                  for x in (k, v))                                   # (B n, H, S, D)
        o, s = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qt[:, lo:hi].flatten(0, 1), kw, vw, 0.0, False, attn_mask=m, scale=scale)
        out[:, :, lo:hi] = o.unflatten(0, (b, -1)).transpose(1, 2)
        lse[:, :, lo:hi] = s.unflatten(0, (b, -1)).transpose(1, 2)
        del o, s                                     # before the next call makes its own
    return out.flatten(2, 3)[:, :, :t], lse.flatten(2, 3)[:, :, :t]


ALIBI_SPLIT_MIN = 1536  # below, the fused kernel is faster (measured crossover, BENCHMARKS.md)


def _alibi_split_heads(q, k, v, scale):
    """Causal ALiBi in float32 with its steep heads as bands. With |s q.k| <= b for every
    pair (b from the largest query and key norms), a key d positions back weighs at most
    exp(2b - m_h d) of its row's largest weight, so beyond W_h = (2b + 88 + ln T) / m_h
    the keys of a row together weigh under exp(-88) of it: below float32's smallest
    normal, so leaving them out changes no float32 result beyond that size, while
    computing them feeds subnormals to the GEMMs (~10x slower on x86; inside SDPA's worker
    threads, where flush-to-zero cannot be set). Heads with W_h at most half the sequence
    run `_band` over their window; the others the fused causal kernel (`_alibi_sdpa`).
    None when no head qualifies."""
    b, h, t, _ = q.shape
    slopes = _alibi_slopes(h, q.device)
    with torch.no_grad():
        bound = scale * float(q.norm(dim=-1).max()) * float(k.norm(dim=-1).max())
    windows = [math.ceil((2 * bound + 88 + math.log(t)) / float(m)) for m in slopes]
    steep = [i for i, w in enumerate(windows) if w <= t // 2]
    if not steep:
        return None
    rest = [i for i in range(h) if i not in steep]
    out = q.new_empty(b, h, t, v.shape[-1])
    values = _relative_values(("alibi",), None, h, t, t, q.device, q.dtype)   # (H, 2T - 1)
    for i in steep:
        out[:, i:i + 1] = _band(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], values[i:i + 1],
                                scale, windows[i], 1)[0]
    for i in rest:                               # a head at a time: no gathered copies
        out[:, i:i + 1] = _alibi_sdpa(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], scale, 0.0,
                                      False, True, slopes[i:i + 1])
    return out


def op_attention_weights(q, k, v, *extra, pattern, scale, dropout, training, score="scaled",
                         bias=(), rope=None, extras=None, impl="auto", pattern_blocks=None,
                         pattern_band=None):
    """The attention probabilities (B, H, Tq, Tk) of `op_attention` with the same operands."""
    extras = ("key_padding",) * len(extra) if extras is None else extras
    ex = {n: x for n, x in zip(extras, extra) if x is not None}
    tq, tk = q.shape[-2], k.shape[-2]
    if rope is not None:
        q, k = _rope(q, tk - tq, rope), _rope(k, 0, rope)
    qs = torch.matmul(q, ex["score_w"]) if score == "bilinear" else q
    return _explicit_probs(qs, k, q, ex, pattern, scale, score, bias)


def op_attention_cached(cache, key, q, k, v, *extra, **attrs):
    """Decoding step: rotate this step's keys at their positions, append keys/values to
    `cache[key]` (kv_heads of them), attend over all."""
    past = cache[key][0].shape[-2] if key in cache else 0
    if attrs.get("rope") is not None:
        k = _rope(k, past, attrs["rope"])
    if key in cache:
        k = torch.cat([cache[key][0], k], dim=-2)   # (B, Hk, past + T, D)
        v = torch.cat([cache[key][1], v], dim=-2)
    cache[key] = (k, v)
    return op_attention(q, k, v, *extra, rope_keys=False, **attrs)


def _use_blocked(impl, q, k, v, pattern, layout, bias):
    """Forced 'tiled'/'sparse', or 'auto' for a pattern SDPA has no fast path for (not full or
    causal) when the NumPy cost model prices the blocked kernel below dense."""
    if any(t[0] not in ("alibi", "t5") for t in bias):
        return False                      # the blocked kernel adds only ALiBi/T5 biases
    if impl in ("tiled", "sparse"):
        return True
    if impl == "dense" or pattern is None or pattern == CAUSAL:
        return False
    costs = attention_costs(max(q.shape[0], k.shape[0]), q.shape[1], k.shape[1], q.shape[2],
                            k.shape[2], q.shape[3], v.shape[3], layout, q.element_size(), True)
    return costs["sparse"][2] < costs["dense"][2]


def _relative_values(term, table, heads, tq, tk, device, dtype):
    """(H, tq + tk - 1) bias of each relative position -(tk-1) .. tq-1 (ALiBi or T5)."""
    rel = torch.arange(-(tk - 1), tq, device=device)
    if term[0] == "alibi":
        return (-_alibi_slopes(heads, device)[:, None] * rel.abs()[None, :]).to(dtype)
    return table[_t5_buckets(rel, *term[1:])].transpose(0, 1)


def _blocked_attention(q, k, v, ex, pattern, layout, scale, bias, p, gather):
    """The NumPy kernels' blocked attention in torch (autograd flows through it): query tiles
    over the live key blocks of the pattern's layout; rows without a live key give zeros."""
    b, h, tq, _ = q.shape
    hk, tk, dv = k.shape[1], k.shape[2], v.shape[3]
    g = h // hk
    values = [_relative_values(t, ex.get(f"bias{i}"), h, tq, tk, q.device, q.dtype)
              for i, t in enumerate(bias)]
    outs, positions = [], []
    for tiles, keys, rows in blocked_steps(layout, tq, tk, b * h, gather):
        qpos = torch.as_tensor(tiles[:, None] * BLOCK + np.arange(rows)[None, :],
                               device=q.device)                        # (nt, rows)
        kk = torch.as_tensor(keys, device=q.device)                    # (nt, K)
        qt, kt = q[:, :, qpos], k[:, :, kk]                     # (B, H, nt, rows, D) ...
        s = torch.matmul(qt.reshape(b, hk, g, *qt.shape[2:]),
                         kt[:, :, None].transpose(-1, -2)) * scale
        s = s.reshape(s.shape[0], h, *s.shape[3:])              # (B, H, nt, rows, K)
        for vals in values:
            s = s + vals[:, kk[:, None, :] - qpos[:, :, None] + tq - 1]
        allowed = None
        if pattern is not None:
            allowed = eval(pattern, {"abs": abs}, {  # noqa: S307 - pattern text
                "q": (tk - tq + qpos)[:, :, None], "k": kk[:, None, :], "n": tk})
        pad = ex.get("key_padding")
        if pad is not None:
            pad = pad[:, kk][:, None, :, None, :]               # (B, 1, nt, 1, K)
            allowed = pad if allowed is None else (allowed & pad)
        probs = _masked_probs(s, allowed, p)
        o = torch.matmul(probs.reshape(probs.shape[0], hk, g, *probs.shape[2:]),
                         v[:, :, kk][:, :, None])
        outs.append(o.reshape(o.shape[0], h, -1, dv))
        positions.append(qpos.reshape(-1))
    return _assemble(outs, positions, q, v, tq)


# -- linear (kernelized) attention: the NumPy kernels' algorithm in torch (autograd) ----------

LINEAR_CHUNK = 64
LINEAR_EPS = 1e-6


def _phi(x, fmap, scale, query):
    """Feature map (..., T, D) -> (..., T, m), as the NumPy kernel's `_phi` (the favor
    matrix from the same NumPy generator; the queries' max is a constant, detached)."""
    if fmap[0] == "elu_plus_one":
        return F.elu(x) + 1
    w = torch.as_tensor(_favor_matrix(fmap[1], x.shape[-1], fmap[2]), dtype=x.dtype,
                        device=x.device)                                         # (m, D)
    xs = x * math.sqrt(scale)
    a = xs @ w.T
    half = 0.5 * (w * w).sum(1)
    if query:
        a = a + half
        a = a - a.amax(dim=-1, keepdim=True).detach()
    else:
        a = a - half - 0.5 * (xs * xs).sum(-1, keepdim=True)
    return torch.exp(a) / math.sqrt(fmap[1])


def _causal_product(a, b, c, state=None):
    """out[t] = a[t] . (state + sum_{j <= t} b[j] c[j]^T), in chunks of LINEAR_CHUNK. Traced
    for export (`torch.compiler.is_compiling()`) a loop over T would fix T, so it is one
    masked T x T product there (dynamic T; quadratic memory in the exported graph)."""
    if torch.compiler.is_compiling():
        out = torch.tril(a @ b.transpose(-1, -2)) @ c
        if state is not None:
            out = out + a @ state
        update = b.transpose(-1, -2) @ c
        return out, update if state is None else state + update
    outs = []
    for s in range(0, a.shape[-2], LINEAR_CHUNK):
        ac, bc, cc = a[..., s:s + LINEAR_CHUNK, :], b[..., s:s + LINEAR_CHUNK, :], \
            c[..., s:s + LINEAR_CHUNK, :]
        o = torch.tril(ac @ bc.transpose(-1, -2)) @ cc
        if state is not None:
            o = o + ac @ state
        outs.append(o)
        update = bc.transpose(-1, -2) @ cc
        state = update if state is None else state + update
    return torch.cat(outs, dim=-2), state


def _linear_operands(q, k, v, pad, fmap, scale):
    hk = k.shape[1]
    pq, pk = _phi(q, fmap, scale, True), _phi(k, fmap, scale, False)
    if pad is not None:
        pk = pk * pad[:, None, :, None].to(pk.dtype)
    v1 = torch.cat([v, torch.ones(v.shape[:-1] + (1,), dtype=v.dtype, device=v.device)], -1)
    a = pq.reshape(pq.shape[0], hk, pq.shape[1] // hk, *pq.shape[2:])
    return a, pk[:, :, None], v1[:, :, None]


def _linear_den(n, fmap):
    if fmap[0] == "elu_plus_one":
        return n[..., -1:] + LINEAR_EPS
    den = n[..., -1:]
    return torch.where(den > 0, den, torch.ones_like(den))


def _linear_out(n, fmap, q, v):
    """Numerator over normalizer, (B, Hk, G, Tq, Dv) back to (B, H, Tq, Dv)."""
    out = n[..., :-1] / _linear_den(n, fmap)
    return out.reshape(out.shape[0], q.shape[1], q.shape[2], v.shape[-1])


def op_linear_attention(q, k, v, key_padding=None, *, feature_map, causal, scale, has_padding):
    a, b, c = _linear_operands(q, k, v, key_padding, feature_map, scale)
    if causal:
        off = b.shape[-2] - a.shape[-2]
        state = b[..., :off, :].transpose(-1, -2) @ c[..., :off, :] if off else None
        n, _ = _causal_product(a, b[..., off:, :], c[..., off:, :], state)
    else:
        n = a @ (b.transpose(-1, -2) @ c)
    return _linear_out(n, feature_map, q, v)


def op_linear_attention_cached(cache, key, q, k, v, key_padding=None, *, feature_map, causal,
                               scale, has_padding):
    """Decoding step: the recurrent state replaces a KV cache (O(1) memory per step)."""
    a, b, c = _linear_operands(q, k, v, key_padding, feature_map, scale)
    n, cache[key] = _causal_product(a, b, c, cache.get(key))
    return _linear_out(n, feature_map, q, v)


# -- mixture of experts: the NumPy routing (on the detached probabilities), torch compute ------

def op_moe_route(probs, *, top_k, capacity_factor, training=False):
    route = _moe_route(probs.detach().float().cpu().numpy(), top_k, capacity_factor, training)
    return torch.as_tensor(route, device=probs.device)


def op_moe_dispatch(x, route):
    kept = route[2] > 0
    tokens = torch.arange(route.shape[1], device=x.device) % x.shape[0]
    return x.new_zeros((route.shape[1], x.shape[1])).index_put((route[1][kept],),
                                                                x[tokens[kept]])


def op_moe_counts(route, *, experts):
    return torch.bincount(route[0][route[2] > 0], minlength=experts)


def op_moe_combine(y, probs, route, *, top_k, normalize):
    n = probs.shape[0]
    gates = probs.gather(1, route[0].reshape(top_k, n).T)                # (N, k)
    if normalize:
        gates = gates / gates.sum(1, keepdim=True)
    gates = gates * route[2].reshape(top_k, n).T.to(gates.dtype)
    picked = y[route[1]].reshape(top_k, n, y.shape[1])
    return torch.einsum("knd,nk->nd", picked, gates)


def op_moe_aux(probs, route, *, top_k):
    n, e = probs.shape
    f = torch.bincount(route[0], minlength=e).to(probs.dtype) / n
    return e * (f * probs.mean(0)).sum()


def op_moe_dropped(route, *, device, fdtype):
    return 1.0 - route[2].to(fdtype).mean()


def op_grouped_linear(x, counts, w, b=None, *, has_bias):
    # split/unbind rather than slicing and indexing: their backward concatenates/stacks,
    # where a slice's or select's backward zero-fills a full-size gradient per expert
    sizes = counts.tolist()
    rest = x.shape[0] - sum(sizes)
    segs = torch.split(x, sizes + [rest])
    ws = w.unbind(0)
    bs = b.unbind(0) if b is not None else [None] * len(sizes)
    parts = [seg @ we.T if be is None else torch.addmm(be, seg, we.T)
             for seg, we, be in zip(segs, ws, bs)]
    parts.append(x.new_zeros((rest, w.shape[1])))
    return torch.cat(parts)


def op_conv1d(x, w, b=None, *, pad_left, pad_right, groups, has_bias):
    xp = F.pad(x.transpose(1, 2), (pad_left, pad_right))                 # (B, C, T + pads)
    return F.conv1d(xp, w, b, groups=groups).transpose(1, 2)


def _take_t(x, idx):
    """x (B, H, T, F) gathered along T by idx (B, H, R, T) -> (B, H, R, T, F)."""
    x = x[:, :, None].expand(-1, -1, idx.shape[2], -1, -1)
    return torch.gather(x, 3, idx[..., None].expand(-1, -1, -1, -1, x.shape[-1]))


def _window_t(x):
    if x.shape[-3] == 1:
        return x
    return torch.cat([torch.roll(x, 1, dims=-3), x], dim=-2)


def op_lsh_attention(q, v, key_padding=None, *, lsh, scale, has_padding):
    """The NumPy kernel's algorithm (same rotations, same sort) in torch; autograd gives
    the gradient (the bucket ids and the sort are constants)."""
    buckets, rounds, chunk, causal, seed = lsh
    bsz, h, t, d = q.shape
    tp = -(-t // chunk) * chunk
    if tp != t:
        q = F.pad(q, (0, 0, 0, tp - t))
        v = F.pad(v, (0, 0, 0, tp - t))
    k = q / torch.sqrt((q * q).sum(-1, keepdim=True)).clamp_min(1e-6)
    rot = torch.as_tensor(_lsh_rotations(h, d, buckets, rounds, seed), dtype=q.dtype,
                          device=q.device)
    with torch.no_grad():
        proj = torch.einsum("bhtd,rhdn->bhrtn", k, rot)
        bucket = torch.cat([proj, -proj], -1).argmax(-1)                  # (B, H, R, Tp)
        pos = torch.arange(tp, device=q.device)
        valid = (pos < t).expand(bsz, tp)
        if key_padding is not None:
            valid = valid & F.pad(key_padding, (0, tp - t))
        bucket = torch.where(valid[:, None, None, :], bucket, buckets)
        perm = torch.argsort(bucket * tp + pos, dim=-1)      # unique keys: stable needless
        inv = torch.argsort(perm, dim=-1)
    c = min(chunk, tp)
    n = tp // c

    def chunks(x):
        return x.reshape(*x.shape[:-2], n, c, x.shape[-1])

    qs, ks, vs = (chunks(_take_t(x, perm)) for x in (q, k, v))
    ps = chunks(perm[..., None])[..., 0]
    bs = chunks(torch.gather(bucket, -1, perm)[..., None])[..., 0]
    vk = chunks(torch.gather(valid[:, None, None, :].expand_as(perm), -1, perm)[..., None])[..., 0]
    kw, vw = _window_t(ks), _window_t(vs)
    pw, bw, vkw = (_window_t(x[..., None])[..., 0] for x in (ps, bs, vk))
    allowed = (bs[..., :, None] == bw[..., None, :]) & vkw[..., None, :]
    if causal:
        allowed = allowed & (pw[..., None, :] <= ps[..., :, None])
    self_ = pw[..., None, :] == ps[..., :, None]
    s = (qs @ kw.transpose(-1, -2)) * scale
    s = torch.where(allowed & ~self_, s, torch.full_like(s, LSH_MASKED))
    s = torch.where(self_ & allowed, torch.full_like(s, LSH_SELF), s)
    lse = torch.logsumexp(s, dim=-1)                                       # (..., n, c)
    o = torch.softmax(s, dim=-1) @ vw                                      # (..., n, c, Dv)
    o_r = torch.gather(o.reshape(*perm.shape, -1), 3,
                       inv[..., None].expand(-1, -1, -1, -1, o.shape[-1]))
    lse_r = torch.gather(lse.reshape(perm.shape), -1, inv)                 # (B, H, R, Tp)
    out = (torch.softmax(lse_r, dim=2)[..., None] * o_r).sum(2)
    return out[:, :, :t]


def op_batch_norm(x, running_mean, running_var, weight=None, bias=None, *, eps, momentum,
                  affine, training=False):
    """torch's batch norm on the channels-last rows; while training it moves the running
    buffers in place (unbiased variance), as nn.BatchNorm1d."""
    y = F.batch_norm(x.reshape(-1, x.shape[-1]), running_mean, running_var, weight, bias,
                     training, momentum, eps)
    return y.reshape(x.shape)
