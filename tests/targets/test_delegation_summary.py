"""What counts as compute left outside the delegate, and what as glue at the program's boundary."""

from __future__ import annotations

import operator

import torch

from lgc.targets.executorch.emit import io_layout_copies


def _to_dim_order_copy(x):  # stands for dim_order_ops._to_dim_order_copy in a lowered program
    return x


def test_layout_copies_of_caller_inputs_and_outputs_are_glue_but_copies_of_constants_are_not():
    g = torch.fx.Graph()
    x, weight = g.placeholder("x"), g.placeholder("b_weight")  # a caller input, and a constant lifted to a placeholder
    x_nhwc = g.call_function(_to_dim_order_copy, (x,))
    w_nhwc = g.call_function(_to_dim_order_copy, (weight,))
    y = g.call_function(operator.add, (x_nhwc, w_nhwc))
    mid = g.call_function(_to_dim_order_copy, (y,))  # between two computations: not at the boundary
    z = g.call_function(operator.mul, (mid, mid))
    g.output(g.call_function(_to_dim_order_copy, (z,)))
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    assert sum(io_layout_copies(gm, user_inputs=["x"]).values()) == 2  # x's copy and the output's
    assert sum(io_layout_copies(gm).values()) == 1  # without the signature, only the output's is known to be glue
