"""pytorch/examples' DCGAN for 8x8 images: a generator of transposed convolutions from a `latent` noise vector, and a
discriminator of strided convolutions that scores an image as real (a logit)."""
import torch
from torch import nn


class DCGAN(nn.Module):
    def __init__(self, latent: int = 16, width: int = 32):
        super().__init__()
        self.latent = latent
        self.generator = nn.Sequential(  # (N, latent, 1, 1) -> (N, 1, 8, 8)
            nn.ConvTranspose2d(latent, width * 2, 2, 1, 0, bias=False), nn.BatchNorm2d(width * 2), nn.ReLU(),
            nn.ConvTranspose2d(width * 2, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1, bias=False), nn.Tanh())
        self.discriminator = nn.Sequential(  # (N, 1, 8, 8) -> (N,)
            nn.Conv2d(1, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2),
            nn.Conv2d(width * 2, 1, 2, 1, 0, bias=False), nn.Flatten(0))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """Images for `noise` (N, latent): the generator is what the model is for once trained."""
        return self.generator(noise[:, :, None, None])  # not view(len(noise), ...): exports keep any batch size

    def example_input(self, module: str = "") -> torch.Tensor:
        """Noise for export.py to trace and check the model (or its `generator` submodule, or --module
        discriminator) with."""
        if module == "discriminator":
            return torch.rand(4, 1, 8, 8) * 2 - 1
        noise = torch.randn(4, self.latent, generator=torch.Generator().manual_seed(0))
        return noise[:, :, None, None] if module == "generator" else noise
