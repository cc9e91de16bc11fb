"""A toy nowcasting network and method used to test the training skeleton (not a test file)."""

from __future__ import annotations

import torch
from torch import nn

from geogen.methods import NowcastMethod


class ToyNet(nn.Module):
    """Lead frames = a 3x3 convolution of the context frames (+ noise when sampling)."""

    def __init__(self, context: int = 2, lead: int = 3, noise: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(context, lead, 3, padding=1)
        self.noise = noise

    def forward(self, context, generator=None):
        mean = self.conv(context)
        z = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + self.noise * z


class ToyMethod(NowcastMethod):
    model_name = "toy"
    val_monitor = ("val/loss", "min")

    def __init__(self, network, optimizer=None, network_config=None, weight: float = 1.0):
        super().__init__(network, optimizer, network_config)
        self.save_hyperparameters(ignore=["network", "optimizer"])
        self.weight = weight

    def training_step(self, batch, batch_idx):
        loss = self.weight * (self.network(batch["context"]) - batch["target"]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = (self.network(batch["context"]) - batch["target"]).pow(2).mean()
        self.log("val/loss", loss)

    test_step = validation_step

    def configure_optimizers(self):
        return self.build_optimizer(None, self.network.parameters())

    def sample(self, context, members=1, leads=None, generator=None):
        out = [self.network(context, generator=generator) for _ in range(members)]
        return torch.stack(out, dim=1)
