"""MIL operations, executed with torch: one function per op type, registered in ``OPS``.

Each function receives the op's parameters by their MIL names (tensors as
torch tensors, already widened from fp16 to fp32; everything else as plain
Python values) and returns a tensor or a tuple of tensors. The interpreter
casts every result to the dtype the program declares for it, so a program
that computes in fp16 has every intermediate rounded to fp16, as on device;
inside one op the arithmetic is fp32 (Core ML's GPU and Neural Engine also
accumulate wider than they store). Semantics follow coremltools'
``mil/ops/defs`` documentation for each op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPS: dict = {}


def op(*names):
    def register(fn):
        for name in names or (fn.__name__,):
            OPS[name] = fn
        return fn

    return register


def ints(v) -> list[int]:
    if isinstance(v, torch.Tensor):
        return [int(i) for i in v.reshape(-1).tolist()]
    if isinstance(v, (list, tuple)):
        return [int(i) for i in v]
    return [int(v)]


def scalar(v):
    return v.item() if isinstance(v, torch.Tensor) else v


def _axes(v, rank: int) -> list[int]:
    return [a % rank for a in ints(v)]


# ---- elementwise ---------------------------------------------------------

_BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "real_div": torch.div, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum, "floor_div": lambda x, y: torch.div(x, y, rounding_mode="floor"),
    "mod": torch.remainder, "equal": torch.eq, "not_equal": torch.ne, "less": torch.lt, "less_equal": torch.le,
    "greater": torch.gt, "greater_equal": torch.ge, "logical_and": torch.logical_and, "logical_or": torch.logical_or,
    "logical_xor": torch.logical_xor,
}
for _name, _fn in _BINARY.items():
    OPS[_name] = (lambda f: lambda x, y: f(torch.as_tensor(x), torch.as_tensor(y)))(_fn)

_UNARY = {
    "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu, "sin": torch.sin, "cos": torch.cos,
    "exp": torch.exp, "exp2": torch.exp2, "sqrt": torch.sqrt, "square": torch.square, "abs": torch.abs, "erf": torch.erf,
    "floor": torch.floor, "ceil": torch.ceil, "round": torch.round, "sign": torch.sign, "logical_not": torch.logical_not,
    "softplus": F.softplus, "identity": lambda x: x, "softsign": F.softsign,
}
for _name, _fn in _UNARY.items():
    OPS[_name] = (lambda f: lambda x: f(x))(_fn)


@op()
def rsqrt(x, epsilon=1e-12):
    return torch.rsqrt(x + epsilon)


@op()
def inverse(x, epsilon=1e-4):
    return 1.0 / (x + epsilon)


@op()
def log(x, epsilon=1e-45):
    return torch.log(x + epsilon)


@op()
def clip(x, alpha, beta):
    return torch.clamp(x, scalar(alpha), scalar(beta))


@op()
def leaky_relu(x, alpha=0.01):
    return F.leaky_relu(x, scalar(alpha))


@op()
def gelu(x, mode="EXACT"):
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x, approximate="tanh" if mode == "TANH_APPROXIMATION" else "none")


@op()
def softmax(x, axis=-1):
    return torch.softmax(x, dim=int(scalar(axis)))


@op()
def select(cond, a, b):
    return torch.where(cond.bool(), a, b)


_CAST = {"fp16": torch.float16, "fp32": torch.float32, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
         "uint8": torch.uint8, "bool": torch.bool, "uint16": torch.int32}


@op()
def cast(x, dtype):
    return x.to(_CAST[dtype])


# ---- reductions ----------------------------------------------------------

def _reduce(fn):
    def run(x, axes=None, keep_dims=False):
        dims = list(range(x.dim())) if axes is None else _axes(axes, x.dim())
        return fn(x, dims, bool(keep_dims))

    return run


OPS["reduce_mean"] = _reduce(lambda x, d, k: x.mean(dim=d, keepdim=k))
OPS["reduce_sum"] = _reduce(lambda x, d, k: x.sum(dim=d, keepdim=k))
OPS["reduce_max"] = _reduce(lambda x, d, k: x.amax(dim=d, keepdim=k))
OPS["reduce_min"] = _reduce(lambda x, d, k: x.amin(dim=d, keepdim=k))
OPS["reduce_sum_square"] = _reduce(lambda x, d, k: (x * x).sum(dim=d, keepdim=k))
OPS["reduce_l2_norm"] = _reduce(lambda x, d, k: (x * x).sum(dim=d, keepdim=k).sqrt())


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):  # torch.prod takes one dim at a time
        x = x.prod(dim=d, keepdim=keep)
    return x


OPS["reduce_prod"] = _reduce(_prod)


@op()
def reduce_argmax(x, axis=-1, keep_dims=False):
    return x.argmax(dim=int(scalar(axis)), keepdim=bool(keep_dims)).to(torch.int32)


# ---- linear algebra and convolution --------------------------------------

@op()
def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


@op()
def matmul(x, y, transpose_x=False, transpose_y=False):
    if transpose_x:
        x = x.transpose(-1, -2)
    if transpose_y:
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


def _conv_padding(x, weight, strides, pad_type, pad, dilations):
    """MIL pad as begin/end pairs per spatial dim, for every pad_type."""
    spatial = x.dim() - 2
    if pad_type == "custom":
        return ints(pad)
    if pad_type == "valid":
        return [0] * (2 * spatial)
    out = []
    for i in range(spatial):
        n, k, s, d = x.shape[2 + i], weight.shape[2 + i], strides[i], dilations[i]
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small = total // 2
        out += [total - small, small] if pad_type == "same_lower" else [small, total - small]
    return out


@op()
def conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    spatial = x.dim() - 2
    strides = ints(strides) if strides is not None else [1] * spatial
    dilations = ints(dilations) if dilations is not None else [1] * spatial
    pads = _conv_padding(x, weight, strides, pad_type, pad, dilations)
    # F.pad lists the last dimension first.
    torch_pad = [p for i in reversed(range(spatial)) for p in (pads[2 * i], pads[2 * i + 1])]
    x = F.pad(x, torch_pad)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(x, weight, bias, stride=strides, dilation=dilations, groups=int(scalar(groups)))


@op()
def conv_transpose(x, weight, bias=None, pad=None, output_shape=None, pad_type="valid", strides=None, dilations=None, groups=1):
    spatial = x.dim() - 2
    if pad_type not in ("valid", "custom"):
        raise NotImplementedError(f"conv_transpose pad_type {pad_type!r}")
    strides = ints(strides) if strides is not None else [1] * spatial
    dilations = ints(dilations) if dilations is not None else [1] * spatial
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    out = fn(x, weight, bias, stride=strides, dilation=dilations, groups=int(scalar(groups)))
    if pad_type == "custom":
        pads = ints(pad)
        idx = [slice(None), slice(None)] + [slice(pads[2 * i], out.shape[2 + i] - pads[2 * i + 1]) for i in range(spatial)]
        out = out[tuple(idx)]
    return out


# ---- normalisation -------------------------------------------------------

@op()
def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    return F.batch_norm(x, mean, variance, gamma, beta, training=False, eps=float(scalar(epsilon)))


@op()
def instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    return F.instance_norm(x, weight=gamma, bias=beta, eps=float(scalar(epsilon)))


@op()
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    dims = list(range(x.dim())) if axes is None else _axes(axes, x.dim())
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + float(scalar(epsilon)))
    # gamma and beta have the shape of the normalised axes, which need not be the innermost ones.
    shape = [x.shape[d] if d in dims else 1 for d in range(x.dim())]
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


@op()
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    # A bool mask keeps where True; a float mask is added to the scores: F.sdpa reads both the same way.
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)


# ---- shapes and data movement --------------------------------------------

@op()
def reshape(x, shape):
    shape = ints(shape)
    if len(shape) == x.dim():
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op()
def transpose(x, perm):
    return x.permute(ints(perm))


@op()
def expand_dims(x, axes):
    rank = x.dim() + len(ints(axes))
    for a in sorted(a % rank for a in ints(axes)):
        x = x.unsqueeze(a)
    return x


@op()
def squeeze(x, axes=None):
    if axes is None:
        return x.squeeze()
    for a in sorted(_axes(axes, x.dim()), reverse=True):
        x = x.squeeze(a)
    return x


@op()
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    rank = x.dim()
    begin, end = ints(begin), ints(end)
    stride = ints(stride) if stride is not None else [1] * rank
    begin_mask = [bool(b) for b in (begin_mask.tolist() if begin_mask is not None else [False] * rank)]
    end_mask = [bool(b) for b in (end_mask.tolist() if end_mask is not None else [False] * rank)]
    squeeze_mask = [bool(b) for b in (squeeze_mask.tolist() if squeeze_mask is not None else [False] * rank)]
    if any(s < 0 for s in stride):
        raise NotImplementedError("slice_by_index with a negative stride")
    idx = []
    for d in range(rank):
        if squeeze_mask[d]:
            idx.append(begin[d])
            continue
        idx.append(slice(None if begin_mask[d] else begin[d], None if end_mask[d] else end[d], stride[d]))
    return x[tuple(idx)]


@op()
def slice_by_size(x, begin, size):
    idx = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(ints(begin), ints(size)))
    return x[idx]


@op()
def concat(values, axis, interleave=False):
    if interleave:
        raise NotImplementedError("concat with interleave=True")
    return torch.cat(list(values), dim=int(scalar(axis)))


@op()
def split(x, axis, num_splits=None, split_sizes=None):
    dim = int(scalar(axis))
    sizes = ints(split_sizes) if split_sizes is not None else [x.shape[dim] // int(scalar(num_splits))] * int(scalar(num_splits))
    return tuple(torch.split(x, sizes, dim=dim))


@op()
def stack(values, axis):
    return torch.stack(list(values), dim=int(scalar(axis)))


@op()
def tile(x, reps):
    return x.repeat(ints(reps))  # MIL requires one rep per dim, as torch.repeat does


@op()
def gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    if int(scalar(batch_dims)) != 0:
        raise NotImplementedError("gather with batch_dims != 0")
    dim = int(scalar(axis)) % x.dim()
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[dim], idx)
    return x[(slice(None),) * dim + (idx,)]


@op()
def gather_along_axis(x, indices, axis=0, validate_indices=False):
    dim = int(scalar(axis))
    idx = indices.long()
    return torch.gather(x, dim, torch.where(idx < 0, idx + x.shape[dim], idx))


@op()
def upsample_nearest_neighbor(x, scale_factor_height=1, scale_factor_width=1):
    return F.interpolate(x, scale_factor=(float(scalar(scale_factor_height)), float(scalar(scale_factor_width))), mode="nearest")


@op()
def pad(x, pad, mode="constant", constant_val=0.0):
    pads = ints(pad)
    n = len(pads) // 2
    # MIL lists begin/end pairs from the first padded dim; F.pad from the last.
    torch_pad = [p for i in reversed(range(n)) for p in (pads[2 * i], pads[2 * i + 1])]
    if mode == "constant":
        return F.pad(x, torch_pad, value=float(scalar(constant_val)))
    # Reflect/replicate pad only the innermost dims (MIL lists zeros for the others; F.pad refuses them).
    while len(torch_pad) > 2 and torch_pad[-2:] == [0, 0]:
        torch_pad = torch_pad[:-2]
    return F.pad(x, torch_pad, mode=mode)


@op()
def fill(shape, value=0.0):
    return torch.full(ints(shape), scalar(value))


@op()
def fill_like(ref_tensor, value=0.0):
    return torch.full(ref_tensor.shape, scalar(value))


@op()
def range_1d(end, start, step):
    return torch.arange(scalar(start), scalar(end), scalar(step))


@op()
def shape(x):
    return torch.tensor(list(x.shape), dtype=torch.int32)


@op()
def band_part(x, lower=-1, upper=-1):
    rows, cols = x.shape[-2:]
    i = torch.arange(rows).unsqueeze(1)
    j = torch.arange(cols).unsqueeze(0)
    keep = torch.ones(rows, cols, dtype=torch.bool)
    if int(scalar(lower)) >= 0:
        keep &= (i - j) <= int(scalar(lower))
    if int(scalar(upper)) >= 0:
        keep &= (j - i) <= int(scalar(upper))
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype))


@op()
def cumsum(x, axis=0, exclusive=False, reverse=False):
    dim = int(scalar(axis))
    if reverse:
        x = x.flip(dim)
    out = torch.cumsum(x, dim)
    if exclusive:
        out = out - x
    return out.flip(dim) if reverse else out


# ---- compressed weights (constexpr ops, evaluated once when the program loads) ----

def _blocks(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Repeat each entry of a per-block tensor over its block, to ``like``'s shape."""
    for d in range(like.dim()):
        if t.shape[d] != like.shape[d]:
            t = t.repeat_interleave(like.shape[d] // t.shape[d], dim=d)
    return t


@op()
def constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    """iOS 16: (q - zero_point) * scale, with zero_point and scale scalars or vectors along ``axis``."""
    shape = [1] * quantized_data.dim()
    dim = int(scalar(axis)) % quantized_data.dim()
    shape[dim] = -1
    zp = zero_point.reshape(shape) if zero_point.dim() else zero_point
    sc = scale.reshape(shape) if scale.dim() else scale
    return (quantized_data.float() - zp.float()) * sc.float()


@op()
def constexpr_blockwise_shift_scale(data, scale, offset=None):
    """iOS 18: scale * (data - offset), scale and offset given per block of ``data``."""
    x = data.float()
    if offset is not None:
        x = x - _blocks(offset.float(), data)
    return x * _blocks(scale.float(), data)


@op()
def constexpr_lut_to_dense(indices, lut, vector_axis=None, shape=None):
    """Palettized weights. iOS 18 form: ``lut`` [*blocks, NUM_PALETTES, VECTOR_SIZE] per block of ``indices``."""
    if shape is not None:  # iOS 16 form: one table, indices already unpacked to the flat weight
        return lut[indices.long().reshape(-1)].reshape(ints(shape))
    if lut.shape[-1] != 1:
        raise NotImplementedError("constexpr_lut_to_dense with vector palettization (VECTOR_SIZE > 1)")
    table = lut[..., 0]  # [*blocks, NUM_PALETTES]
    blocks = table.shape[:-1]
    idx = indices.long()
    # The table of each element: its block's, repeated over the block.
    expanded = table
    for d in range(idx.dim()):
        if blocks[d] != idx.shape[d]:
            expanded = expanded.repeat_interleave(idx.shape[d] // blocks[d], dim=d)
    return torch.gather(expanded, -1, idx.unsqueeze(-1)).squeeze(-1)


@op()
def constexpr_cast(source_val, output_dtype):
    return source_val.to(_CAST[output_dtype])
