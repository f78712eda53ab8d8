"""Weight-only int8 (or int4) embedding tables: the text encoder's largest tensor, read a few rows per prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import PassResult, register_pass
from lgc.passes.fusion.graph_utils import NodeRewritePass, add_constant, constant_of

aten = torch.ops.aten


def _load_quantized_embedding_ops() -> None:
    # Defines quantized_decomposed::embedding_{byte,4bit} (with their fake kernels) in torch.
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401


def quantize_rows(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row quantization; returns (int8 or packed uint8 codes, fp32 scale per row).

    Per row, because a row is all that one token reads: one scale per token
    keeps rare tokens with small norms from being flattened by frequent ones.
    For 4 bits the codes are packed two per byte the way ExecuTorch's
    ``embedding_4bit`` kernel reads them (even column in the high nibble, offset by 8).
    """
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.clamp(torch.round(w / scale[:, None]), -qmax - 1, qmax).to(torch.int8)
    if bits == 4:
        u = (q + 8).to(torch.uint8)
        q = (u[:, ::2] << 4) | u[:, 1::2]
    return q, scale


@register_pass
class QuantizeEmbeddingWeights(NodeRewritePass):
    """Store embedding tables as int8 (or int4) codes with one fp32 scale per row.

    Before: ``aten.embedding(W, ids)`` with ``W`` an fp32 parameter (the token
            table is 43 K of the reference text encoder's 144 K parameters,
            and XNNPACK does not take ``embedding``, so it stays fp32 outside
            the delegate whatever the activation quantizer does).
    After:  ``quantized_decomposed.embedding_byte(Wq, scales, None, qmin, qmax, ids)``
            (``embedding_4bit`` for 4 bits): ExecuTorch's quantized kernel
            library, which the manifest lists as a kernel the app must link.
    Precondition: ``W`` is a constant of the graph (a get_attr), tables with at
    least ``min_rows`` rows (small ones save nothing worth an extra kernel).
    """

    name = "quantize_embedding_weights"
    group = "quantization"
    op_targets = (aten.embedding.default,)

    @dataclass(frozen=True)
    class Config:
        components: tuple = ("text_encoder",)  # names of the component graphs to rewrite
        bits: int = 8  # 8: embedding_byte; 4: embedding_4bit (two codes per byte)
        min_rows: int = 256  # smaller tables (e.g. 77 positions) are left in fp32

        def __post_init__(self):
            if self.bits not in (4, 8):
                raise ValueError(f"bits must be 4 or 8, got {self.bits}")

    def run(self, state, config: Config) -> PassResult:
        _load_quantized_embedding_ops()
        self._config = config
        return super().run(state, config)

    def rewrite(self, gm, node):
        weight, ids = node.args[0], node.args[1]
        if len(node.args) > 2:  # padding_idx etc.: leave alone
            return None
        table = constant_of(gm, weight)  # None unless the table is a constant of the graph
        if table is None or table.dim() != 2 or table.shape[0] < self._config.min_rows:
            return None
        bits = self._config.bits
        if bits == 4 and table.shape[1] % 2:
            return None
        codes, scales = quantize_rows(table, bits)
        q_node = add_constant(gm, f"{weight.target}_q{bits}", codes)
        s_node = add_constant(gm, f"{weight.target}_scales", scales)
        g = gm.graph
        qmax = 2 ** (bits - 1) - 1
        op = torch.ops.quantized_decomposed.embedding_byte if bits == 8 else torch.ops.quantized_decomposed.embedding_4bit
        return g.call_function(op.default, (q_node, s_node, None, -qmax - 1, qmax, ids))

