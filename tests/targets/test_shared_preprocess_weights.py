"""XNNPACK preprocess on a copy of the partitioned program that shares its weights: the same program, no weight copy."""

from __future__ import annotations

import contextlib

import torch


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(16).eval()  # XNNPACK fuses it into the conv's weights
        self.up = torch.nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.lin = torch.nn.Linear(16, 4)

    def forward(self, x):
        y = self.up(torch.relu(self.norm(self.conv(x))))
        return self.lin(y.mean(dim=(2, 3)).repeat(1, 2))


def _lower(module, x, shared: bool):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from lgc.targets.executorch.shared_preprocess_weights import shared_preprocess_weights

    ep = torch.export.export(module, (x,))
    before = {k: v.clone() for k, v in ep.state_dict.items()}
    with shared_preprocess_weights() if shared else contextlib.nullcontext():
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    assert all(torch.equal(before[k], v) for k, v in ep.state_dict.items())  # nothing wrote into the source weights
    return edge.to_executorch().buffer


def test_same_program_bytes_with_shared_weights():
    module, x = Block().eval(), torch.randn(1, 8, 6, 6)
    assert _lower(module, x, shared=True) == _lower(module, x, shared=False)


def test_the_copy_shares_tensors_and_the_patch_is_undone():
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir import to_edge

    from lgc.targets.executorch.shared_preprocess_weights import shared_preprocess_weights

    edge = to_edge(torch.export.export(Block().eval(), (torch.randn(1, 8, 6, 6),))).exported_program()
    with shared_preprocess_weights():
        copied = XnnpackBackend.copy_exported_program_for_preprocess(edge, [])
    assert copied is not edge and copied.graph_module is not edge.graph_module
    assert all(copied.state_dict[k] is v for k, v in edge.state_dict.items())
    plain = XnnpackBackend.copy_exported_program_for_preprocess(edge, [])
    assert all(plain.state_dict[k] is not v for k, v in edge.state_dict.items())
