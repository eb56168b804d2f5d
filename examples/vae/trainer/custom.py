"""The VAE's loss and its samples, through the documented extension points: a Trainer subclass whose `forward`
makes the target the input itself and whose `compute_loss` adds the KL divergence (docs/training_step.md), values
logged with `self.log`, and a callback that writes decoded samples (docs/callbacks.md)."""
import torch
from torchvision.utils import save_image

from trainer.callbacks import Callback
from trainer.trainer import Step, Trainer


class VAETrainer(Trainer):
    """The negative evidence lower bound per image: the config's reconstruction loss (summed over pixels) plus the KL
    divergence of each code's Gaussian from the standard normal."""

    def forward(self, model, batch):
        images, _ = batch  # the labels are not used: the target is the image itself
        return model(images), images.flatten(1)

    def compute_loss(self, output, target):
        reconstruction, mean, log_variance = output
        pixels = self.criterion(reconstruction, target) / len(target)
        kl = -0.5 * torch.sum(1 + log_variance - mean.pow(2) - log_variance.exp()) / len(target)
        self.log("reconstruction", pixels)
        self.log("kl", kl)
        return pixels + kl

    def validation_step(self, model, batch):
        output, target = self.forward(model, batch)
        return Step(self.compute_loss(output, target), output, target)


class SampleImages(Callback):
    """After each validation, `count` images decoded from codes drawn from the prior, as a PNG grid in the run's log
    folder (rank 0 writes it). The codes are drawn from a generator of its own, so training's random state is
    untouched and a resumed run samples the same images."""

    def __init__(self, count: int = 64):
        self.count = count

    @torch.no_grad()
    def on_validation_end(self, trainer, values):
        if not trainer.dist.is_main:
            return
        model = trainer.model
        codes = torch.randn(self.count, model.latent, generator=torch.Generator().manual_seed(0)).to(trainer.device)
        side = int(model.decoder[-2].out_features ** 0.5)
        images = model.decoder(codes).view(-1, 1, side, side)
        save_image(images, trainer.run.log / f"samples_epoch{trainer.epoch}.png", nrow=8)
