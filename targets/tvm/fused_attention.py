"""Relax pass: attention (``softmax(Q K^T) V``) as one hand-scheduled kernel instead of three tuned ones.

lgc's graphs reach TVM with attention as ``matmul -> softmax -> matmul``
(the ``unmask_attention`` pass makes that form), and TVM compiles each as a
kernel of its own: the whole score matrix (8 x 256 x 256 floats, 2 MB, for
the reference U-Net's self-attention) is written, read and written again by
the softmax, and read by the second matmul. With a head size of 8 each
score costs 8 multiply-adds, so the kernels are bound by that memory
traffic, and tuning cannot help: tuned, the three took 2.7 ms a call, a
third of the U-Net's step.

This kernel takes a tile of query rows at a time and keeps everything
about those rows (scores, maximum, exponentials, sum) in buffers of one row
each, in cache: scores vectorised along the keys, the exponentials by
``topi.fast_exp`` (the polynomial the fast-math pass uses for softmax),
the row maximum and sum as vector partial reductions (``rfactor``), the
output vectorised along the head dimension. It is scheduled here, so
MetaSchedule has nothing to tune: tuning skips kernels marked scheduled.
"""

from __future__ import annotations

import functools
import math

# Query rows per parallel task: each task reads all of K and V, so more rows amortise that.
ROWS = 4
# fp32 lanes of AVX2; on NEON (4 lanes) LLVM splits each vector op in two, which is still a vector op.
LANES = 8


def _lanes(extent: int) -> int:
    """The vector length for a loop of ``extent``: ``LANES`` or the largest power of two dividing it."""
    return math.gcd(extent, LANES)


def attention_kernel(b: int, n: int, m: int, d: int, dv: int, dtype: str):
    """The scheduled PrimFunc: ``out[b, i] = softmax_j(q[b, i] . kt[b, :, j]) v[b, j]``, K given transposed."""
    from tvm import te, topi

    q = te.placeholder((b, n, d), dtype, "q")
    kt = te.placeholder((b, d, m), dtype, "kt")
    v = te.placeholder((b, m, dv), dtype, "v")
    rd, rj, rj2, rj3 = te.reduce_axis((0, d), "d"), te.reduce_axis((0, m), "j"), te.reduce_axis((0, m), "j"), te.reduce_axis((0, m), "j")
    scores = te.compute((b, n, m), lambda x, i, j: te.sum(q[x, i, rd] * kt[x, rd, j], axis=rd), "scores")
    row_max = te.compute((b, n), lambda x, i: te.max(scores[x, i, rj], axis=rj), "row_max")
    shifted = te.compute((b, n, m), lambda x, i, j: scores[x, i, j] - row_max[x, i], "shifted")
    exp = topi.fast_exp(shifted)
    row_sum = te.compute((b, n), lambda x, i: te.sum(exp[x, i, rj2], axis=rj2), "row_sum")
    weighted = te.compute((b, n, dv), lambda x, i, c: te.sum(exp[x, i, rj3] * v[x, rj3, c], axis=rj3), "weighted")
    out = te.compute((b, n, dv), lambda x, i, c: weighted[x, i, c] / row_sum[x, i], "attention")
    return _schedule(te.create_prim_func([q, kt, v, out]), b * n, m, dv, exp.op.name)


def _schedule(func, rows_total: int, m: int, dv: int, exp_block: str):
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    lanes_m, lanes_c = _lanes(m), _lanes(dv)
    # Row maximum and sum as lanes_m partial reductions (vector max/add), combined at the end.
    partial = {}
    for name in ("row_max", "row_sum"):
        _, inner = sch.split(sch.get_loops(sch.get_sblock(name))[-1], [None, lanes_m])
        partial[name] = sch.rfactor(inner, 2)
    # Tiles of query rows, one parallel task each; every intermediate is computed per tile.
    x, i, c = sch.get_loops(sch.get_sblock("attention"))
    tile, _ = sch.split(sch.fuse(x, i), [None, math.gcd(rows_total, ROWS)])
    sch.parallel(tile)
    sch.vectorize(c) if lanes_c > 1 else None
    for block in ("weighted", "row_sum", partial["row_sum"], exp_block, "shifted", "row_max", partial["row_max"], "scores"):
        sch.compute_at(sch.get_sblock(block) if isinstance(block, str) else block, tile, preserve_unit_loops=True)
    sch.compute_inline(sch.get_sblock("shifted"))
    for block in partial.values():  # rfactor puts the lane loop outermost; innermost, it is vectorised
        lane, x, i, keys = sch.get_loops(block)[-4:]
        sch.reorder(x, i, keys, lane)
        sch.vectorize(lane) if lanes_m > 1 else None
        sch.decompose_reduction(block, keys)
    # Scores: head dimension outside, keys inside and vectorised (K^T rows are contiguous along keys).
    block = sch.get_sblock("scores")
    row, key, dim = sch.get_loops(block)[-3:]
    key_outer, key_lane = sch.split(key, [None, lanes_m])
    sch.reorder(key_outer, dim, row, key_lane)
    sch.vectorize(key_lane) if lanes_m > 1 else None
    sch.unroll(row)
    sch.unroll(dim)
    sch.decompose_reduction(block, dim)
    _, key_lane = sch.split(sch.get_loops(sch.get_sblock(exp_block))[-1], [None, lanes_m])
    sch.vectorize(key_lane) if lanes_m > 1 else None
    # Output: keys outside, head dimension inside and vectorised (V rows are contiguous along it).
    block = sch.get_sblock("weighted")
    row, chan, key = sch.get_loops(block)[-3:]
    sch.reorder(key, row, chan)
    sch.unroll(row)
    sch.vectorize(chan) if lanes_c > 1 else None
    sch.decompose_reduction(block, key)
    # Marked scheduled: MetaSchedule neither tunes nor re-schedules it; opaque: never fused into neighbours.
    # Nameless: the module gives it a name where it is added.
    return sch.mod["main"].without_attr("global_symbol").with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})


def _attention_inputs(mutator, call):
    """((q, kt, v), (b, n, m, d, dv)) if ``call`` is the second matmul of a ``matmul -> softmax(last axis) -> matmul``
    chain, else None."""
    from tvm import relax, tirx

    def producer(expr, op_name):
        if not isinstance(expr, relax.Var):
            return None
        bound = mutator.lookup_binding(expr)
        return bound if isinstance(bound, relax.Call) and getattr(bound.op, "name", None) == op_name else None

    if getattr(call.op, "name", None) != "relax.matmul":
        return None
    softmax = producer(call.args[0], "relax.nn.softmax")
    scores = producer(softmax.args[0], "relax.matmul") if softmax is not None else None
    if scores is None or int(softmax.attrs.axis) not in (-1, 2):
        return None
    q, kt, v = scores.args[0], scores.args[1], call.args[1]
    # Static 3-D float32 shapes only: the kernel is scheduled for known extents.
    for info in [a.ty for a in (q, kt, v)] + [call.ty]:
        if not (isinstance(info, relax.TensorType) and info.dtype == "float32" and info.ndim == 3
                and isinstance(info.shape, relax.ShapeExpr) and all(isinstance(e, tirx.IntImm) for e in info.shape.values)):
            return None
    (b, n, d), (bk, dk, m), (bv, mv, dv) = (tuple(int(e.value) for e in a.ty.shape.values) for a in (q, kt, v))
    # No batch broadcasting (matmul allows it, the kernel indexes every operand by the same batch).
    return ((q, kt, v), (b, n, m, d, dv)) if b == bk == bv and d == dk and m == mv else None


@functools.cache  # one class per process, as the fast-math pass's
def _mutator():
    from tvm import relax
    from tvm.relax import expr_functor

    @expr_functor.mutator
    class FuseAttention(expr_functor.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.kernels = {}

        def visit_call_(self, call):
            call = super().visit_call_(call)
            found = _attention_inputs(self, call)
            if found is None:
                return call
            operands, key = found
            if key not in self.kernels:
                self.kernels[key] = self.builder_.add_func(attention_kernel(*key, "float32"), f"fused_attention{len(self.kernels)}")
            return relax.call_tir(self.kernels[key], list(operands), call.ty)

    return FuseAttention


def fused_attention():
    """The pass (a ``tvm.transform.Pass``), to run on Relax before fast math (it matches the exact softmax)."""
    import tvm
    from tvm import relax

    from lgc.targets.tvm.relax_pass import mutator_pass

    # The replaced matmuls and softmaxes are left unused.
    return tvm.transform.Sequential([mutator_pass(_mutator(), "lgc.FusedAttention"), relax.transform.DeadCodeElimination()])
