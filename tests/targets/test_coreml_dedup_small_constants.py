"""lgc::dedup_small_constants: equal small constants shared once coremltools' pipeline is done, numerics unchanged."""

from __future__ import annotations

import pytest
import torch

ct = pytest.importorskip("coremltools")

from coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication import const_deduplication  # noqa: E402

from lgc.runtime_harness.coreml.program import MilProgram  # noqa: E402
from lgc.targets.coreml import dedup_small_constants  # noqa: E402


class Repeated(torch.nn.Module):
    """Four blocks with the same small parameters (slice bounds, clamp limits, scale), as a U-Net's blocks have."""

    def forward(self, x):
        for _ in range(4):
            x = torch.clamp(x[:, 1:7] * 0.5 + 0.25, -1.0, 1.0).repeat(1, 2, 1)[:, :8]
        return x


def convert(path, pipeline):
    ep = torch.export.export(Repeated(), (torch.randn(1, 8, 5),)).run_decompositions({})
    kw = {} if pipeline is None else {"pass_pipeline": pipeline}
    ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               compute_precision=ct.precision.FLOAT16, skip_model_load=True, **kw).save(str(path))
    return MilProgram(path)


def const_ops(path) -> int:
    spec = ct.utils.load_spec(str(path))
    fn = spec.mlProgram.functions["main"]
    return sum(op.type == "const" for op in fn.block_specializations[fn.opset].operations)


def test_small_constants_are_shared_and_results_unchanged(tmp_path):
    default = convert(tmp_path / "default.mlpackage", None)
    lgc = convert(tmp_path / "lgc.mlpackage", dedup_small_constants.pipeline())
    before, after = const_ops(tmp_path / "default.mlpackage"), const_ops(tmp_path / "lgc.mlpackage")
    # Each block's scalars and bounds are their own consts in coremltools' default; lgc's keeps one of each.
    assert after <= before / 2, (before, after)
    x = torch.randn(1, 8, 5, dtype=torch.float16)
    assert torch.equal(default(x)[0], lgc(x)[0])
    # The threshold is coremltools' global state: it is back to its default after the conversion.
    assert const_deduplication._const_threshold == 100


def test_pass_runs_last_after_coremltools_default_pipeline():
    names = dedup_small_constants.pass_names()
    assert names[:-1] == list(ct.PassPipeline.DEFAULT.passes) and names[-1] == "lgc::dedup_small_constants"
