"""PyTorch kernels, one per op: `op_<name>(*inputs, **attrs)`, differentiable by autograd.

Ops that create tensors take `device` and `fdtype` (the program's float dtype); ops whose
behaviour differs in training (dropout, attention dropout) take `training`. Attention goes
to `F.scaled_dot_product_attention` (fused kernels where the pattern allows).
"""

import math

import torch
import torch.nn.functional as F

CAUSAL = "(k <= q)"
_MASKS: dict = {}


def op_constant(*, value, dtype, device, fdtype):
    return value


def op_arange(*, n, offset, device, fdtype):
    return torch.arange(offset, offset + n, device=device)


def op_sinusoidal(*, n, dim, offset, device, fdtype):
    pos = torch.arange(offset, offset + n, dtype=torch.float64, device=device)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=device)
                    * (-math.log(10000.0) / dim))
    table = torch.empty(n, dim, dtype=torch.float64, device=device)      # (n, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table.to(fdtype)


def op_add(a, b):
    return torch.add(a, b)


def op_sub(a, b):
    return torch.sub(a, b)


def op_mul(a, b):
    return torch.mul(a, b)


def op_div(a, b):
    return torch.div(a, b)


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


def op_sigmoid(x):
    return torch.sigmoid(x)


def op_relu(x):
    return F.relu(x)


def op_silu(x):
    return F.silu(x)


def op_gelu(x, *, approximate):
    return F.gelu(x, approximate=approximate)


def op_cast(x, *, dtype, device, fdtype):
    return x.to({"float": fdtype, "int": torch.int64, "bool": torch.bool}[dtype])


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


def op_linear(x, w, b=None, *, has_bias):
    return F.linear(x, w, b)


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


def op_concat(*xs, axis):
    return torch.cat(xs, dim=axis)


def op_expand(x, *, shape):
    return x.expand(shape)


def op_index(x, *, index):
    return x[tuple(i if isinstance(i, int) else slice(*i) for i in index)]


def op_softmax(x, *, axis):
    return torch.softmax(x, dim=axis)


def op_layer_norm(x, g, b=None, *, eps, has_bias):
    return F.layer_norm(x, (x.shape[-1],), g, b, eps)


def op_rms_norm(x, g, *, eps):
    return F.rms_norm(x, (x.shape[-1],), g, eps)


def op_embedding(table, ids):
    return F.embedding(ids, table)


def attention_mask(pattern, tq, tk, device):
    """Boolean [tq, tk] mask (queries are the last tq of tk positions), cached."""
    key = (pattern, tq, tk, str(device))
    if key not in _MASKS:
        q = torch.arange(tk - tq, tk, device=device)[:, None]
        k = torch.arange(tk, device=device)[None, :]
        _MASKS[key] = eval(pattern, {"abs": abs}, {"q": q, "k": k})  # noqa: S307 - pattern text
    return _MASKS[key]


def op_attention(q, k, v, key_padding=None, *, pattern, scale, dropout, training):
    """softmax(q k^T * scale + mask) v on (B, H, T, D); fully masked rows give zeros."""
    p = dropout if training else 0.0
    tq, tk = q.shape[-2], k.shape[-2]
    if key_padding is None and (pattern is None or (pattern == CAUSAL and tq == 1)):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scale)
    if key_padding is None and pattern == CAUSAL and tq == tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scale)
    mask = None if pattern is None else attention_mask(pattern, tq, tk, q.device)
    if key_padding is not None:
        pad = key_padding[:, None, None, :]                       # (B, 1, 1, Tk)
        mask = pad if mask is None else (mask & pad)
    live = mask.any(dim=-1, keepdim=True)                         # rows with some key
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~live, dropout_p=p,
                                         scale=scale)
    return out.masked_fill(~live, 0.0)


def op_attention_cached(cache, key, q, k, v, key_padding=None, **attrs):
    """Decoding step: append this step's keys/values to `cache[key]`, attend over all."""
    if key in cache:
        k = torch.cat([cache[key][0], k], dim=-2)   # (B, H, past + T, D)
        v = torch.cat([cache[key][1], v], dim=-2)
    cache[key] = (k, v)
    return op_attention(q, k, v, key_padding, **attrs)
