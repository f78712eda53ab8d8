"""A small conv/attention-like graph in a build state, for the three PT2E passes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lgc.compiler.model_import import Component


class ConvLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.lin(y.mean(dim=(2, 3)))


def make_state(samples: int = 16):
    torch.manual_seed(1)
    calib = [(torch.randn(1, 4, 8, 8),) for _ in range(samples)]
    module = ConvLinear().eval()
    gm = torch.export.export(module, calib[0]).module()
    comp = Component("unet", module, calib[0], ["x"], ["y"], "ConvLinear", graph=gm)
    return SimpleNamespace(model=SimpleNamespace(components={"unet": comp})), calib


@pytest.fixture
def conv_state():
    return make_state()[0]
