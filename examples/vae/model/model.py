"""The VAE of pytorch/examples (vae/main.py), sized for 8x8 images: an encoder to the mean and log-variance of a
Gaussian over `latent` dimensions, a sample drawn from it by the reparameterisation trick, and a decoder back to
pixel probabilities."""
import torch
from torch import nn


class VAE(nn.Module):
    def __init__(self, pixels: int = 64, hidden: int = 128, latent: int = 8):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU())
        self.mean, self.log_variance = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, pixels), nn.Sigmoid())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstructed pixel probabilities (N, pixels), and the mean and log-variance of each image's code."""
        hidden = self.encoder(images)
        mean, log_variance = self.mean(hidden), self.log_variance(hidden)
        code = mean + torch.randn_like(mean) * (0.5 * log_variance).exp() if self.training else mean
        return self.decoder(code), mean, log_variance

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """What predict.py and export.py serve: each image's code (the mean of its Gaussian)."""
        return self.mean(self.encoder(images))
