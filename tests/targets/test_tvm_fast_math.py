"""The TVM fast-math pass: no scalar libm exp/erf left in the kernels, and the same numbers as torch."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("tvm")


class Transcendentals(torch.nn.Module):
    """Every op the pass rewrites, as diffusers' blocks use them: GELU (GEGLU), SiLU (ResNet), softmax (attention)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(32, 32)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.proj(x)) + torch.nn.functional.silu(x)
        return torch.softmax(h @ h.transpose(-1, -2), dim=-1)


def _prepared(fast: bool):
    import tvm

    from lgc.compiler.model_import import Component
    from lgc.targets.tvm import tuning
    from lgc.targets.tvm.emit import relax_module

    module, x = Transcendentals().eval(), torch.randn(2, 64, 32) * 3
    comp = Component("unet", module, (x,), ["x"], ["y"], "Transcendentals", graph=torch.export.export(module, (x,)).module())
    target = tvm.target.Target(tuning.resolve_target({"kind": "llvm", "mcpu": "host"}))
    mod = relax_module(comp)
    if not fast:  # the same preparation without the pass, to show what it removes
        from tvm import relax

        with target:
            mod = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(), relax.get_pipeline("zero")])(mod)
        return comp, target, mod
    return comp, target, tuning.prepare(mod, target)


def _libm_calls(mod) -> set[str]:
    import re

    text = "\n".join(f.script() for f in mod.functions.values() if hasattr(f, "script") and "PrimFunc" in type(f).__name__)
    return set(re.findall(r"T\.(exp|erf|sigmoid|tanh)\(", text))


def test_exact_forms_are_scalar_libm_calls_without_the_pass():
    _, _, mod = _prepared(fast=False)
    assert _libm_calls(mod) == {"exp", "erf", "sigmoid"}  # softmax, GELU, SiLU: each a scalar C library call per element


def test_fast_math_leaves_no_libm_transcendental_and_matches_torch():
    from tvm import relax

    import tvm

    comp, target, mod = _prepared(fast=True)
    assert _libm_calls(mod) == set()
    vm = relax.VirtualMachine(relax.build(mod, target=target), tvm.cpu())
    x = comp.example_inputs[0]
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    got = torch.from_numpy((out[0] if not hasattr(out, "numpy") else out).numpy())
    with torch.no_grad():
        ref = comp.module(x)
    # fp32 polynomial approximations: a few ulps, far inside the harness's 35 dB gate.
    assert torch.allclose(got, ref, atol=2e-6, rtol=1e-5), (got - ref).abs().max()
