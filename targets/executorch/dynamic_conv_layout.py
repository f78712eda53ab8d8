"""Work around executorch 1.5.1's NHWC conversion of dynamically quantized conv inputs.

XNNPACK's ``ChannelsLastTaggedReshapePass.input_to_nhwc`` handles a conv
whose input is dynamically quantized (``choose_qparams -> quantize ->
dequantize``) by converting the *source* of that chain to NHWC once. To find
the source it follows ``args[0]`` "back to the original source node", but
nothing stops the walk at the chain: it runs on through the previous convs,
adds and views up to the first graph input. Every upstream test has the conv
straight after a graph input, where the two coincide; in a U-Net the walk
lands on a 3-D attention tensor and lowering fails ("required rank 4 tensor
to use channels_last format"), and where it lands on another 4-D tensor the
program lowers and silently computes garbage (tests/targets/
test_dynamic_conv_layout.py shows both). Same code on executorch main (2026-08). Fix 1 stops the walk at the
quantize node's input, the tensor the chain actually quantizes.

Having made an NHWC copy of that tensor, upstream then hands the copy to
*every* user of the tensor (``replace_all_uses_with``), including users the
pass has already visited and laid out for NCHW; in a U-Net whose skip
concatenation is split (``split_concat_conv``) the program then fails at
run time ("Propagating input shapes failed"). Fix 2 redirects only the
chain's own quantize and choose_qparams nodes, and a second chain on the
same tensor reuses the copy.

``fixed_dynamic_conv_layout()`` swaps in the corrected method for the
duration of one lowering; only graphs with dynamically quantized inputs take
the changed branch.
"""

from __future__ import annotations

import contextlib

import torch


def _dynamic_source(node: torch.fx.Node) -> torch.fx.Node:
    """The tensor a dynamic ``quantize -> dequantize`` chain quantizes: walk dequantize/quantize only."""
    from executorch.backends.xnnpack.utils.quant_utils import is_dequant, is_quant

    while (is_dequant(node) or is_quant(node)) and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


def _chain_nodes(dq: torch.fx.Node) -> set:
    """The nodes of a dynamic ``choose_qparams -> quantize -> dequantize`` chain, ending at ``dq``, without its source."""
    source = _dynamic_source(dq)
    chain, todo = set(), [dq]
    while todo:
        node = todo.pop()
        if node is source or node in chain:
            continue
        chain.add(node)
        todo.extend(n for n in node.all_input_nodes if n is not source and n.op == "call_function")
    return chain


def _input_to_nhwc(self, graph_module, input_node, target_node) -> None:
    """executorch 1.5.1's method, with the dynamic-source walk bounded (see the module docstring)."""
    from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import ChannelsLastTaggedReshapePass as P
    from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import InputDimOrder
    from executorch.backends.xnnpack.utils.quant_utils import is_dynamic_qdq
    from executorch.backends.xnnpack.utils.utils import is_param_node
    from executorch.exir.dialects._ops import ops as exir_ops

    if is_param_node(self.exported_program, input_node):
        if P.XNN_NHWC_NODE in input_node.meta and P.is_nchw_node(input_node):
            raise AssertionError("The same constant data tensor can't be used in NCHW format in one place and NHWC in another")
        self.mark_as_nhwc_node(input_node)
    if input_node.op == "placeholder":
        if self._is_nhwc(input_node.meta["val"][0]):
            return
    elif P.is_nhwc_node(input_node):
        return
    if self.input_dim_order(input_node, InputDimOrder.NHWC):
        return
    if not self.can_be_converted_to_nhwc(input_node):
        raise AssertionError("Attempting to convert non-NHWC compatible node to NHWC")
    if P.PARTNER_NODE in input_node.meta:
        input_node_nhwc = input_node.meta[P.PARTNER_NODE]
    else:
        is_dynamic_input = is_dynamic_qdq(input_node)
        chain = set()
        if is_dynamic_input:
            chain = _chain_nodes(input_node)
            input_node = _dynamic_source(input_node)  # fix 1: upstream walks args[0] to the graph input
        partner = input_node.meta.get(P.PARTNER_NODE) if is_dynamic_input else None
        if partner is not None and P.is_nhwc_node(partner):
            input_node_nhwc = partner  # another chain on the same tensor already made its NHWC copy
        else:
            with graph_module.graph.inserting_after(input_node):
                input_node_nhwc = self.create_call_function_node(
                    graph_module=graph_module, target=exir_ops.edge.aten._to_copy.default,
                    args=(input_node,), memory_format=torch.channels_last)
                P.mark_as_nhwc_node(input_node_nhwc)
        if is_dynamic_input:
            # fix 2: only this chain reads the NHWC copy. Upstream redirects every user of the
            # tensor, including ops the pass already laid out for NCHW (see the module docstring).
            for user in list(input_node.users):
                if user in chain:
                    user.replace_input_with(input_node, input_node_nhwc)
    self.insert_copy_and_assign_partner_nodes_quantization_sensitive(
        graph_module=graph_module, original_input=input_node, copy_node=input_node_nhwc, target_node=target_node)


@contextlib.contextmanager
def fixed_dynamic_conv_layout():
    from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import ChannelsLastTaggedReshapePass

    original = ChannelsLastTaggedReshapePass.input_to_nhwc
    ChannelsLastTaggedReshapePass.input_to_nhwc = _input_to_nhwc
    try:
        yield
    finally:
        ChannelsLastTaggedReshapePass.input_to_nhwc = original
