"""Palettized weight formats (ios-w4, ios-w6): the table size each asks for, decoded by lgc's interpreter as coremltools does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools")

import coremltools.optimize.coreml as cto  # noqa: E402

from lgc.compiler.bundle import size_bytes  # noqa: E402
from lgc.runtime_harness.coreml.program import MilProgram  # noqa: E402
from lgc.targets.coreml.emit import PALETTIZED, _const_shapes, compression_config  # noqa: E402


class ConvLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(32, 48, 3, padding=1)
        self.proj = torch.nn.Linear(48, 64)

    def forward(self, x):
        return self.proj(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("weights", sorted(PALETTIZED))
def test_palette_has_two_to_the_bits_entries_and_decodes_as_coremltools_does(weights, tmp_path):
    ep = torch.export.export(ConvLinear(), (torch.randn(1, 32, 8, 8),)).run_decompositions({})
    mlmodel = ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                         compute_precision=ct.precision.FLOAT16, skip_model_load=True)
    mlmodel.save(str(tmp_path / "fp16.mlpackage"))
    fn, config = compression_config(weights, _const_shapes(mlmodel))
    getattr(cto, fn)(mlmodel, config).save(str(tmp_path / "pal.mlpackage"))
    dense = cto.decompress_weights(ct.models.MLModel(str(tmp_path / "pal.mlpackage"), skip_model_load=True))
    dense.save(str(tmp_path / "dense.mlpackage"))

    spec = ct.utils.load_spec(str(tmp_path / "pal.mlpackage"))
    fn_spec = spec.mlProgram.functions["main"]
    luts = [op for op in fn_spec.block_specializations[fn_spec.opset].operations if op.type == "constexpr_lut_to_dense"]
    assert len(luts) == 2  # the conv's and the linear's weights
    nbits = PALETTIZED[weights]
    program = MilProgram(tmp_path / "pal.mlpackage")
    x = torch.randn(1, 32, 8, 8, dtype=torch.float16)
    assert torch.equal(program(x)[0], MilProgram(tmp_path / "dense.mlpackage")(x)[0])
    # Each group of 16 output channels takes at most 2**nbits distinct values, and more than a palette
    # two bits narrower would hold (the bits are used, not just declared).
    decoded = [op.outputs[0].val for op in dense._mil_program.functions["main"].operations
               if op.op_type == "const" and np.ndim(op.outputs[0].val) >= 2]
    assert sorted(w.shape for w in decoded) == [(48, 32, 3, 3), (64, 48)]
    distinct = [len(set(w[g:g + 16].ravel().tolist())) for w in decoded for g in range(0, w.shape[0], 16)]
    assert max(distinct) <= 2 ** nbits and min(distinct) > 2 ** (nbits - 2), distinct
    weight_bytes = lambda p: size_bytes(tmp_path / p / "Data" / "com.apple.CoreML" / "weights")  # noqa: E731
    # nbits per weight instead of 16, plus the tables (2**nbits fp16 values per 16 channels).
    assert weight_bytes("pal.mlpackage") <= (nbits / 16 + 0.06) * weight_bytes("fp16.mlpackage")
