"""PT2E step 1 of 3: annotate each component for XNNPACK W8A8 and insert observers."""

from __future__ import annotations

from dataclasses import dataclass

from lgc.compiler.pass_manager import Pass, PassResult, register_pass


@register_pass
class AnnotateXnnpackW8A8(Pass):
    """Mark the ops XNNPACK runs in int8 and attach observers to their inputs and outputs.

    Before: fp32 aten graph (conv2d, linear, add, ...).
    After:  the same graph with ``activation_post_process_*`` observer modules
            around every annotated op (``prepare_pt2e`` with XNNPACKQuantizer).
    Options: per-channel or per-tensor weights; which components to quantize.
    The observers see data only in ``calibrate_observers``; ``convert_pt2e``
    turns them into quantize/dequantize pairs.
    """

    name = "annotate_xnnpack_w8a8"
    group = "quantization"

    @dataclass(frozen=True)
    class Config:
        per_channel: bool = True  # per-output-channel int8 weight scales (XNNPACK's recommended form)
        components: tuple = ("text_encoder", "unet", "vae_decoder")  # which graphs to quantize

    def run(self, state, config: Config) -> PassResult:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        prepared = []
        for name, comp in state.model.components.items():
            if name not in config.components or comp.graph is None:
                continue
            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=config.per_channel))
            comp.graph = prepare_pt2e(comp.graph, quantizer)
            n_obs = sum(1 for n in comp.graph.graph.nodes if n.op == "call_module" and "activation_post_process" in str(n.target))
            comp.meta["observers"] = n_obs
            if n_obs:
                prepared.append(name)
        return PassResult(bool(prepared), {"prepared": prepared, "observers": {n: state.model.components[n].meta["observers"] for n in prepared}})
