"""Relax pass: exp, erf, tanh, softmax, GELU and sigmoid computed with TVM's polynomial approximations.

LLVM has no vector form of the C library's ``expf``/``erff``, so TVM's
exact forms compile to one scalar libm call per element, which no schedule
can vectorise: tuned, the reference U-Net's attention softmax
(8x256x256) still took 1.4 ms a call, more than the attention matmuls
around it, and its GELUs 0.6 ms. ``topi.fast_exp``/``fast_erf`` are
plain arithmetic (a range reduction and a polynomial), which LLVM
vectorises; their error is a few float32 ulps, far below what the
harness's quality gate can see.

TVM's own ``FastMathTransform`` covers softmax, exp, erf and tanh; the
U-Net's GELU and SiLU reach TVM as ``nn.gelu`` and ``sigmoid``, which it
leaves exact, so this pass adds them.
"""

from __future__ import annotations

import functools


def _gelu(x):
    from tvm import tirx, topi

    c = lambda v: tirx.const(v, x.dtype)  # noqa: E731
    # 0.5 x (1 + erf(x / sqrt 2)): the exact GELU that torch's default and TVM's nn.gelu compute.
    return topi.multiply(topi.multiply(x, c(0.5)), topi.add(topi.fast_erf(topi.multiply(x, c(0.7071067811865476))), c(1.0)))


def _sigmoid(x):
    from tvm import tirx, topi

    one = tirx.const(1.0, x.dtype)
    return topi.divide(one, topi.add(one, topi.fast_exp(topi.negative(x))))


@functools.cache  # one class per process: prepare() runs once per component and build
def _mutator():
    from tvm.relax import expr_functor
    from tvm.relax.transform.fast_math import FastMathCodeGenerator

    @expr_functor.mutator
    class FastMath(FastMathCodeGenerator._cls):  # the decorated class cannot be subclassed; its _cls can
        def visit_call_(self, call):
            if getattr(call.op, "name", None) == "relax.nn.gelu":
                return self.builder_.call_te(_gelu, call.args[0])
            if getattr(call.op, "name", None) == "relax.sigmoid":
                return self.builder_.call_te(_sigmoid, call.args[0])
            return super().visit_call_(call)

    return FastMath


def fast_math():
    """The pass (a ``tvm.transform.Pass``), to run on Relax before legalisation."""
    from lgc.targets.tvm.relax_pass import mutator_pass

    return mutator_pass(_mutator(), "lgc.FastMath")
