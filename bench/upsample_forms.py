"""One int8 upsampler (nearest 2x + 3x3 conv) as XNNPACK runs it: a transposed convolution, or deconv_as_phase_convs' phase convolutions.

    python bench/upsample_forms.py --channels 640 --size 32
    python bench/upsample_forms.py --channels 64 --size 16 --activations static --rounds 100

Builds the fused transposed convolution exactly as ``upsample_conv_as_deconv``
does, and its phase form with the ``deconv_as_phase_convs`` pass itself;
quantizes both with XNNPACK's PT2E quantizer (per-channel int8 weights,
dynamic or static activations), lowers them to one XNNPACK delegate each, and
times them interleaved in the ExecuTorch runtime (batch 2, as the U-Net runs
with classifier-free guidance). Prints each form's error against the fp32
upsample + conv and its median time, and the ratio. This is how
``deconv_as_phase_convs.min_in_channels`` was chosen.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def forms(channels: int, size: int):
    from types import SimpleNamespace

    from lgc.compiler.model_import import Component
    from lgc.passes.fusion.deconv_as_phase_convs import DeconvAsPhaseConvs
    from lgc.passes.fusion.upsample_conv_as_deconv import fused_kernel

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    class UpsampleConv(torch.nn.Module):
        def forward(self, x):
            return conv(F.interpolate(x, scale_factor=2, mode="nearest"))

    class Deconv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(fused_kernel(conv.weight, 2))
            self.bias = torch.nn.Parameter(conv.bias.detach().clone())

        def forward(self, x):
            return F.conv_transpose2d(x, self.weight, self.bias, stride=2, padding=1)

    x = torch.randn(2, channels, size, size)
    module = Deconv().eval()
    deconv = torch.export.export(module, (x,)).module()
    phases = Component("unet", module, (x,), ["x"], ["y"], "Deconv", graph=torch.export.export(module, (x,)).module())
    DeconvAsPhaseConvs().run(SimpleNamespace(model=SimpleNamespace(components={"unet": phases})), DeconvAsPhaseConvs.Config(min_in_channels=1))
    return x, UpsampleConv().eval(), {"transposed conv": deconv, "phase convs": phases.graph}


def lowered(gm, x, dynamic: bool, folder: Path, name: str):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from lgc.runtime_harness.runners import ExecuTorchRunner
    from lgc.targets.executorch.dynamic_conv_layout import fixed_dynamic_conv_layout

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    gm = prepare_pt2e(gm, quantizer)
    for _ in range(4):
        gm(torch.randn_like(x))
    gm = convert_pt2e(gm)
    with fixed_dynamic_conv_layout():
        edge = to_edge_transform_and_lower(torch.export.export(gm, (x,)), partitioner=[XnnpackPartitioner()])
    path = folder / f"{name.replace(' ', '_')}.pte"
    path.write_bytes(edge.to_executorch().buffer)
    return ExecuTorchRunner(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=640)
    ap.add_argument("--size", type=int, default=32, help="input height and width (the output is twice that)")
    ap.add_argument("--activations", choices=["dynamic", "static"], default="dynamic")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    x, reference, graphs = forms(args.channels, args.size)
    with torch.no_grad():
        ref = reference(x)
    with tempfile.TemporaryDirectory() as tmp:
        runners = {name: lowered(gm, x, args.activations == "dynamic", Path(tmp), name) for name, gm in graphs.items()}
        times = {name: [] for name in runners}
        for name, run in runners.items():
            err = (run(x) - ref).abs().max().item()
            print(f"{name}: max error against fp32 upsample + conv {err:.4f} (output scale {ref.abs().max().item():.2f})")
        for r in range(args.rounds):
            order = list(runners.items()) if r % 2 == 0 else list(runners.items())[::-1]
            for name, run in order:
                time.sleep(0.05)  # let the other program's worker threads go to sleep
                t0 = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["transposed conv"])
    for name, t in times.items():
        print(f"{name}: {statistics.median(t) * 1e3:.2f} ms ({statistics.median(t) / base:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
