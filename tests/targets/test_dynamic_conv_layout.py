"""The workaround for executorch 1.5.1's NHWC handling of dynamically quantized convs deep in a network."""

from __future__ import annotations

import contextlib

import torch


class Deep(torch.nn.Module):
    """conv -> residual add -> 3-D reshape and back -> conv: the second conv's input is not a graph input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        h = self.a(x)
        h = h + torch.nn.functional.silu(h)
        n, c, hh, ww = h.shape
        h = h.reshape(n, c, hh * ww).transpose(1, 2).transpose(1, 2).reshape(n, c, hh, ww)
        return self.b(h)


def _dynamic_program():
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from lgc.passes.quantization.annotate_xnnpack_w8a8 import xnnpack_quantizer

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    gm = prepare_pt2e(torch.export.export(Deep().eval(), (x,)).module(), xnnpack_quantizer(True, lambda n: True, dynamic=True))
    gm(x)
    gm = convert_pt2e(gm)
    return torch.export.export(gm, (x,)), gm, x


def _run_lowered(ep, x, fixed: bool):
    """Lower ``ep`` to XNNPACK (with or without lgc's fix) and run it in the ExecuTorch runtime."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from lgc.targets.executorch.dynamic_conv_layout import fixed_dynamic_conv_layout
    from lgc.targets.executorch.emit import delegation_summary

    with fixed_dynamic_conv_layout() if fixed else contextlib.nullcontext():
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    buffer = edge.to_executorch().buffer  # held: the loaded program reads from it
    method = Runtime.get().load_program(buffer).load_method("forward")
    return method.execute([x])[0], delegation_summary(edge.exported_program().graph_module)


def test_upstream_pass_converts_the_wrong_tensor_without_the_fix():
    """Upstream lowers this graph without complaint and computes garbage; if this starts failing, executorch fixed the walk."""
    ep, gm, x = _dynamic_program()
    got, _ = _run_lowered(ep, x, fixed=False)
    with torch.no_grad():
        want = gm(x)
    assert float((got - want).abs().max()) > 0.1 * float(want.abs().max())


def test_fixed_lowering_is_one_delegate_and_matches_the_quantized_graph():
    ep, gm, x = _dynamic_program()
    got, summary = _run_lowered(ep, x, fixed=True)
    assert summary["delegate_subgraphs"] == 1 and summary["nondelegated_compute_ops"] == 0, summary
    with torch.no_grad():
        want, fp32 = gm(x), Deep().eval()(x)
    scale = float(fp32.abs().max())
    assert float((got - want).abs().max()) < 1e-3 * scale  # the same int8 arithmetic as the quantized graph
    assert float((got - fp32).abs().max()) < 0.05 * scale  # and int8-close to the float block
