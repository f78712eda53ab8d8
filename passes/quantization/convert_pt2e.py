"""PT2E step 3 of 3: replace observers by quantize/dequantize pairs with their calibrated parameters."""

from __future__ import annotations

from dataclasses import dataclass

from lgc.compiler.pass_manager import Pass, PassResult, has_observers, register_pass


@register_pass
class ConvertPt2e(Pass):
    """Turn calibrated observers into the Q/DQ graph the XNNPACK partitioner fuses into int8 kernels.

    Before: graphs with calibrated observers.
    After:  ``quantize_per_tensor``/``dequantize_per_tensor`` (activations) and
            ``dequantize_per_channel`` (weights) around each annotated op; weights stored as int8.
    Precondition: ``calibrate_observers`` ran (an uncalibrated observer would give garbage scales).
    """

    name = "convert_pt2e"
    group = "quantization"

    @dataclass(frozen=True)
    class Config:
        fold_quantize: bool = True  # store weights as int8 constants instead of fp32 + quantize op

    def run(self, state, config: Config) -> PassResult:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        converted = []
        for name, comp in state.model.components.items():
            if comp.graph is not None and has_observers(comp.graph):
                comp.graph = convert_pt2e(comp.graph, fold_quantize=config.fold_quantize)
                comp.meta["quantized"] = True
                converted.append(name)
        return PassResult(bool(converted), {"converted": converted})
