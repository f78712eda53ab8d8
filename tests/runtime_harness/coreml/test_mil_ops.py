"""Each MIL op of lgc's Core ML interpreter against the matching torch computation.

Every case is a one-op ML program built with coremltools' MIL builder and
saved as a real ``.mlpackage`` (so the op's parameters are serialised
exactly as Core ML stores them), read back by the interpreter and run.
The MIL pass pipeline is off, so the program holds the op under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ct = pytest.importorskip("coremltools")
from coremltools.converters.mil import Builder as mb  # noqa: E402

from lgc.runtime_harness.coreml.ops import OPS  # noqa: E402
from lgc.runtime_harness.coreml.program import MilProgram  # noqa: E402

G = np.random.default_rng(0)


def w(*shape):
    return G.standard_normal(shape).astype(np.float32)


def _save(prog, path, target, precision=None):
    # No MIL passes (the program keeps the op under test), except for fp16: the cast to fp16 is itself a pass.
    pipeline = ct.PassPipeline.EMPTY if precision is None else ct.PassPipeline.DEFAULT
    m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True,
                   compute_precision=precision or ct.precision.FLOAT32, pass_pipeline=pipeline)
    m.save(str(path))
    return MilProgram(path)


def run_op(tmp_path, build, shapes, inputs, target=None, precision=None):
    target = target or ct.target.iOS17
    specs = [mb.TensorSpec(shape=s) for s in shapes]
    # The builder reads the function's arity, so *args will not do.
    body = {1: lambda a: build(a), 2: lambda a, b: build(a, b), 3: lambda a, b, c: build(a, b, c)}[len(shapes)]
    prog = mb.program(input_specs=specs, opset_version=target)(body)
    program = _save(prog, tmp_path / "op.mlpackage", target, precision)
    return program, [o.float() for o in program(*inputs)]


W_CONV, B_CONV = w(4, 3, 3, 3), w(4)
W_DW = w(6, 1, 3, 3)
W_LIN, B_LIN = w(5, 8), w(5)
W_DECONV = w(3, 4, 2, 2)
GAMMA, BETA = w(8), w(8)
MEAN, VAR = w(3), np.abs(w(3)) + 0.5
TABLE = w(10, 6)

# (op, input shapes, MIL builder, torch reference); inputs are standard normal unless the op needs positives.
CASES = [
    ("add", [(2, 3), (2, 3)], lambda x, y: mb.add(x=x, y=y), torch.add),
    ("sub", [(2, 3), (1, 3)], lambda x, y: mb.sub(x=x, y=y), torch.sub),
    ("mul", [(2, 3), (2, 1)], lambda x, y: mb.mul(x=x, y=y), torch.mul),
    ("real_div", [(2, 3), (2, 3)], lambda x, y: mb.real_div(x=x, y=mb.add(x=mb.abs(x=y), y=1.0)), lambda x, y: x / (y.abs() + 1)),
    ("pow", [(2, 3)], lambda x: mb.pow(x=mb.abs(x=x), y=1.5), lambda x: x.abs() ** 1.5),
    ("maximum", [(2, 3), (2, 3)], lambda x, y: mb.maximum(x=x, y=y), torch.maximum),
    ("minimum", [(2, 3), (2, 3)], lambda x, y: mb.minimum(x=x, y=y), torch.minimum),
    ("greater_equal", [(4,), (4,)], lambda x, y: mb.cast(x=mb.greater_equal(x=x, y=y), dtype="fp32"), lambda x, y: (x >= y).float()),
    ("equal", [(4,)], lambda x: mb.cast(x=mb.equal(x=x, y=x), dtype="fp32"), lambda x: torch.ones(4)),
    ("less", [(4,), (4,)], lambda x, y: mb.cast(x=mb.less(x=x, y=y), dtype="fp32"), lambda x, y: (x < y).float()),
    ("logical_not", [(4,), (4,)], lambda x, y: mb.cast(x=mb.logical_not(x=mb.less(x=x, y=y)), dtype="fp32"), lambda x, y: (x >= y).float()),
    ("select", [(2, 3), (2, 3)], lambda x, y: mb.select(cond=mb.greater(x=x, y=y), a=x, b=y), torch.maximum),
    ("relu", [(2, 5)], lambda x: mb.relu(x=x), torch.relu),
    ("sigmoid", [(2, 5)], lambda x: mb.sigmoid(x=x), torch.sigmoid),
    ("tanh", [(2, 5)], lambda x: mb.tanh(x=x), torch.tanh),
    ("silu", [(2, 5)], lambda x: mb.silu(x=x), F.silu),
    ("sin", [(2, 5)], lambda x: mb.sin(x=x), torch.sin),
    ("cos", [(2, 5)], lambda x: mb.cos(x=x), torch.cos),
    ("exp", [(2, 5)], lambda x: mb.exp(x=x), torch.exp),
    ("sqrt", [(2, 5)], lambda x: mb.sqrt(x=mb.abs(x=x)), lambda x: x.abs().sqrt()),
    ("rsqrt", [(2, 5)], lambda x: mb.rsqrt(x=mb.abs(x=x), epsilon=1e-3), lambda x: torch.rsqrt(x.abs() + 1e-3)),
    ("square", [(2, 5)], lambda x: mb.square(x=x), torch.square),
    ("abs", [(2, 5)], lambda x: mb.abs(x=x), torch.abs),
    ("erf", [(2, 5)], lambda x: mb.erf(x=x), torch.erf),
    ("log", [(2, 5)], lambda x: mb.log(x=mb.abs(x=x), epsilon=1e-3), lambda x: torch.log(x.abs() + 1e-3)),
    ("inverse", [(2, 5)], lambda x: mb.inverse(x=mb.abs(x=x), epsilon=1e-2), lambda x: 1 / (x.abs() + 1e-2)),
    ("clip", [(2, 5)], lambda x: mb.clip(x=x, alpha=-0.5, beta=0.5), lambda x: x.clamp(-0.5, 0.5)),
    ("leaky_relu", [(2, 5)], lambda x: mb.leaky_relu(x=x, alpha=0.2), lambda x: F.leaky_relu(x, 0.2)),
    ("gelu", [(2, 5)], lambda x: mb.gelu(x=x), F.gelu),
    ("gelu", [(2, 5)], lambda x: mb.gelu(x=x, mode="TANH_APPROXIMATION"), lambda x: F.gelu(x, approximate="tanh")),
    ("softmax", [(2, 3, 5)], lambda x: mb.softmax(x=x, axis=1), lambda x: torch.softmax(x, 1)),
    ("cast", [(2, 5)], lambda x: mb.cast(x=mb.cast(x=x, dtype="fp16"), dtype="fp32"), lambda x: x.half().float()),
    ("reduce_mean", [(2, 3, 4)], lambda x: mb.reduce_mean(x=x, axes=[1, 2], keep_dims=True), lambda x: x.mean((1, 2), keepdim=True)),
    ("reduce_sum", [(2, 3, 4)], lambda x: mb.reduce_sum(x=x, axes=[-1]), lambda x: x.sum(-1)),
    ("reduce_max", [(2, 3, 4)], lambda x: mb.reduce_max(x=x, axes=[0], keep_dims=False), lambda x: x.amax(0)),
    ("linear", [(2, 8)], lambda x: mb.linear(x=x, weight=W_LIN, bias=B_LIN), lambda x: F.linear(x, torch.tensor(W_LIN), torch.tensor(B_LIN))),
    ("matmul", [(2, 3, 4), (2, 5, 4)], lambda x, y: mb.matmul(x=x, y=y, transpose_y=True), lambda x, y: x @ y.transpose(1, 2)),
    ("matmul", [(4, 3), (4, 5)], lambda x, y: mb.matmul(x=x, y=y, transpose_x=True), lambda x, y: x.T @ y),
    ("conv", [(1, 3, 8, 8)], lambda x: mb.conv(x=x, weight=W_CONV, bias=B_CONV, pad_type="same"),
     lambda x: F.conv2d(x, torch.tensor(W_CONV), torch.tensor(B_CONV), padding=1)),
    ("conv", [(1, 3, 9, 9)], lambda x: mb.conv(x=x, weight=W_CONV, pad_type="custom", pad=[1, 0, 0, 1], strides=[2, 2]),
     lambda x: F.conv2d(F.pad(x, (0, 1, 1, 0)), torch.tensor(W_CONV), stride=2)),
    ("conv", [(1, 6, 8, 8)], lambda x: mb.conv(x=x, weight=W_DW, groups=6, pad_type="valid", dilations=[2, 2]),
     lambda x: F.conv2d(x, torch.tensor(W_DW), groups=6, dilation=2)),
    ("conv_transpose", [(1, 3, 5, 5)], lambda x: mb.conv_transpose(x=x, weight=W_DECONV, strides=[2, 2]),
     lambda x: F.conv_transpose2d(x, torch.tensor(W_DECONV), stride=2)),
    ("batch_norm", [(2, 3, 4, 4)], lambda x: mb.batch_norm(x=x, mean=MEAN, variance=VAR, gamma=GAMMA[:3], beta=BETA[:3], epsilon=1e-3),
     lambda x: F.batch_norm(x, torch.tensor(MEAN), torch.tensor(VAR), torch.tensor(GAMMA[:3]), torch.tensor(BETA[:3]), eps=1e-3)),
    ("instance_norm", [(2, 3, 4, 4)], lambda x: mb.instance_norm(x=x, gamma=GAMMA[:3], beta=BETA[:3], epsilon=1e-5),
     lambda x: F.instance_norm(x, weight=torch.tensor(GAMMA[:3]), bias=torch.tensor(BETA[:3]))),
    ("layer_norm", [(2, 5, 8)], lambda x: mb.layer_norm(x=x, axes=[-1], gamma=GAMMA, beta=BETA, epsilon=1e-5),
     lambda x: F.layer_norm(x, (8,), torch.tensor(GAMMA), torch.tensor(BETA))),
    ("layer_norm", [(2, 8, 3)], lambda x: mb.layer_norm(x=x, axes=[1], epsilon=1e-5),
     lambda x: F.layer_norm(x.transpose(1, 2), (8,)).transpose(1, 2)),
    ("reshape", [(2, 3, 4)], lambda x: mb.reshape(x=x, shape=[0, -1, 2]), lambda x: x.reshape(2, 6, 2)),
    ("transpose", [(2, 3, 4)], lambda x: mb.transpose(x=x, perm=[2, 0, 1]), lambda x: x.permute(2, 0, 1)),
    ("expand_dims", [(2, 3)], lambda x: mb.expand_dims(x=x, axes=[0, -1]), lambda x: x[None, :, :, None]),
    ("squeeze", [(2, 1, 3, 1)], lambda x: mb.squeeze(x=x, axes=[1]), lambda x: x.squeeze(1)),
    ("slice_by_index", [(4, 6, 5)], lambda x: mb.slice_by_index(x=x, begin=[1, 0, 2], end=[3, 6, 5], stride=[1, 2, 1],
                                                               end_mask=[False, True, False], squeeze_mask=[False, False, False]),
     lambda x: x[1:3, ::2, 2:5]),
    ("slice_by_index", [(4, 6)], lambda x: mb.slice_by_index(x=x, begin=[2, 1], end=[3, 4], squeeze_mask=[True, False]), lambda x: x[2, 1:4]),
    ("slice_by_size", [(4, 6)], lambda x: mb.slice_by_size(x=x, begin=[1, 2], size=[2, -1]), lambda x: x[1:3, 2:]),
    ("concat", [(2, 3), (2, 4)], lambda x, y: mb.concat(values=[x, y, x], axis=1), lambda x, y: torch.cat([x, y, x], 1)),
    ("split", [(2, 6)], lambda x: mb.split(x=x, split_sizes=[2, 4], axis=1)[1], lambda x: x[:, 2:]),
    ("split", [(2, 6)], lambda x: mb.split(x=x, num_splits=3, axis=-1)[2], lambda x: x[:, 4:]),
    ("stack", [(2, 3), (2, 3)], lambda x, y: mb.stack(values=[x, y], axis=1), lambda x, y: torch.stack([x, y], 1)),
    ("tile", [(2, 3)], lambda x: mb.tile(x=x, reps=[2, 1]), lambda x: x.repeat(2, 1)),
    ("gather", [(1, 4)], lambda x: mb.add(x=mb.gather(x=TABLE, indices=np.array([[3, 0, 9, 3]], np.int32), axis=0), y=mb.reduce_sum(x=x)),
     lambda x: torch.tensor(TABLE)[torch.tensor([[3, 0, 9, 3]])] + x.sum()),
    ("gather_along_axis", [(3, 4)], lambda x: mb.gather_along_axis(x=x, indices=np.array([[0, 1, 2, 0]], np.int32), axis=0),
     lambda x: x.gather(0, torch.tensor([[0, 1, 2, 0]]))),
    ("upsample_nearest_neighbor", [(1, 2, 3, 4)], lambda x: mb.upsample_nearest_neighbor(x=x, scale_factor_height=2, scale_factor_width=2),
     lambda x: F.interpolate(x, scale_factor=2, mode="nearest")),
    ("pad", [(1, 2, 3, 4)], lambda x: mb.pad(x=x, pad=[1, 0, 2, 1], mode="constant", constant_val=0.5),
     lambda x: F.pad(x, (2, 1, 1, 0), value=0.5)),
    ("pad", [(1, 2, 3, 4)], lambda x: mb.pad(x=x, pad=[0, 0, 0, 0, 1, 1, 1, 1], mode="reflect"), lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect")),
    ("fill_like", [(2, 3)], lambda x: mb.add(x=x, y=mb.fill_like(ref_tensor=x, value=2.0)), lambda x: x + 2),
    ("band_part", [(4, 4)], lambda x: mb.band_part(x=x, lower=0, upper=-1), torch.triu),
    ("cumsum", [(2, 5)], lambda x: mb.cumsum(x=x, axis=1), lambda x: x.cumsum(1)),
]


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_op_matches_torch(case, tmp_path):
    name, shapes, build, reference = CASES[case]
    inputs = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
    program, (got,) = run_op(tmp_path, build, shapes, inputs)
    assert name in program.op_types(), f"the program does not hold {name}: {program.op_types()}"
    want = reference(*inputs).float()
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_scaled_dot_product_attention_ios18(tmp_path):
    q, k, v = (torch.randn(1, 2, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    program, (got,) = run_op(tmp_path, lambda q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v),
                             [(1, 2, 5, 8)] * 3, [q, k, v], target=ct.target.iOS18)
    assert "scaled_dot_product_attention" in program.op_types()
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_fp16_program_rounds_every_intermediate(tmp_path):
    """In an fp16 program each op's result is stored in fp16: x*1/3 then *3 is not x, as on device."""
    x = torch.linspace(0.1, 10, 64).reshape(1, 64)
    program, (got,) = run_op(tmp_path, lambda x: mb.mul(x=mb.mul(x=x, y=1 / 3), y=3.0), [(1, 64)], [x],
                             precision=ct.precision.FLOAT16)
    assert program.op_types() == {"cast": 2, "mul": 2}
    third = torch.tensor(1 / 3).half().float()  # the program stores its constants in fp16 too
    want = ((x.half().float() * third).half().float() * 3).half().float()
    assert torch.equal(got, want)
    assert not torch.equal(got, x)  # the rounding is visible, so the test would see it missing


def test_every_op_has_a_torch_case():
    tested = {c[0] for c in CASES} | {"scaled_dot_product_attention", "identity"}
    compile_time = {n for n in OPS if n.startswith("constexpr_")}  # tested against coremltools' own decompression
    untested = set(OPS) - tested - compile_time
    # Ops registered from a table and each a direct torch call; listed so a new op must choose.
    table_only = {"floor_div", "mod", "not_equal", "less_equal", "greater", "logical_and", "logical_or", "logical_xor",
                  "exp2", "floor", "ceil", "round", "sign", "softplus", "softsign", "reduce_min", "reduce_prod",
                  "reduce_sum_square", "reduce_l2_norm", "reduce_argmax", "fill", "range_1d", "shape"}
    assert untested <= table_only, f"ops without a test case: {sorted(untested - table_only)}"


def test_unknown_op_is_named(tmp_path):
    from lgc.compiler.errors import UnsupportedModelError

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 6))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.topk(x=x, k=2)[0]

    with pytest.raises(UnsupportedModelError, match=r"MIL op 'topk' .* not supported by lgc's Core ML interpreter"):
        _save(prog, tmp_path / "topk.mlpackage", ct.target.iOS17)
