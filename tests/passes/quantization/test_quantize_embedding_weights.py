from __future__ import annotations

import pytest
import torch

from lgc.passes.quantization.quantize_embedding_weights import QuantizeEmbeddingWeights, quantize_rows
from lgc.runtime_harness.runners import ExecuTorchRunner
from tests.passes.fusion.conftest import run_pass, state_of


class TokensAndPositions(torch.nn.Module):
    """CLIP's two tables: a large token table and a small position table."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tokens = torch.nn.Embedding(1000, 32)
        self.positions = torch.nn.Embedding(16, 32)
        self.proj = torch.nn.Linear(32, 32)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        return self.proj(self.tokens(ids) + self.positions(pos))


IDS = torch.tensor([[0, 5, 999, 17, 512, 3, 3, 800]])


@pytest.mark.parametrize("bits, max_rel_err", [(8, 0.01), (4, 0.15)])
def test_large_table_quantized_small_one_kept(bits, max_rel_err):
    module = TokensAndPositions().eval()
    res, before, after, err = run_pass(QuantizeEmbeddingWeights, module, IDS, name="text_encoder", bits=bits)
    op = "quantized_decomposed.embedding_byte.default" if bits == 8 else "quantized_decomposed.embedding_4bit.default"
    assert res.changed and before["aten.embedding.default"] == 2
    assert after["aten.embedding.default"] == 1 and after[op] == 1  # positions (16 rows) stay fp32
    scale = module(IDS).abs().max().item()
    assert 0 < err / scale < max_rel_err  # lossy, but only by the rounding of the codes


def test_row_codes_roundtrip_within_half_a_step():
    w = torch.randn(300, 16) * torch.linspace(0.01, 10, 300)[:, None]  # rows of very different norms
    q, s = quantize_rows(w, 8)
    assert q.dtype == torch.int8 and s.shape == (300,)
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6).all()
    # 4 bits: two codes per byte, even column in the high nibble, offset by 8.
    q4, s4 = quantize_rows(w, 4)
    assert q4.dtype == torch.uint8 and q4.shape == (300, 8)
    codes = torch.stack((q4 >> 4, q4 & 15), dim=-1).view(300, 16).float() - 8
    assert ((codes * s4[:, None] - w).abs() <= s4[:, None] / 2 + 1e-5).all()


def test_lowered_program_runs_in_executorch_and_declares_its_kernels(tmp_path):
    from lgc.targets.executorch.emit import emit

    module = TokensAndPositions().eval()
    state = state_of(module, IDS, name="text_encoder")
    QuantizeEmbeddingWeights().run(state, QuantizeEmbeddingWeights.Config())
    comp = state.model.components["text_encoder"]
    art = emit(comp, tmp_path)
    assert art["kernel_libraries"] == ["portable", "quantized"]
    out = ExecuTorchRunner(tmp_path / art["file"])(IDS)
    with torch.no_grad():
        ref = comp.graph(IDS)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # And the table is really stored in 8 bits: the program is smaller than the fp32 table alone.
    assert (tmp_path / art["file"]).stat().st_size < 1000 * 32 * 4 * 0.5


def test_rejects_other_bit_widths():
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        QuantizeEmbeddingWeights.Config(bits=2)
