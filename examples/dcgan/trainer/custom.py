"""The GAN's two steps per batch and its samples, through the documented extension points: a training step that
steps the config's two optimizers itself with `manual_backward` and `step_optimizer` (docs/optimizers.md), values
logged with `self.log`, and a callback that writes the generator's images (docs/callbacks.md)."""
import torch
from torchvision.utils import save_image

from trainer.callbacks import Callback
from trainer.trainer import Step, Trainer


class GANTrainer(Trainer):
    """The discriminator learns to tell real images (label 1) from generated ones (label 0); then the generator
    learns to make the discriminator say 1. The loss shown is the generator's; the discriminator's is logged."""

    def scores(self, model, real, generator=None):
        """Generated images, as many as `real`, and the discriminator's scores (logits) of the real ones."""
        noise = torch.randn(len(real), model.latent, device=real.device, generator=generator)
        fake = model.generator(noise[:, :, None, None])
        return fake, model.discriminator(real)

    def training_step(self, model, batch):
        real, _ = batch
        fake, real_score = self.scores(model, real)
        fake_score = model.discriminator(fake.detach())
        d_loss = self.criterion(real_score, torch.ones_like(real_score)) + \
            self.criterion(fake_score, torch.zeros_like(fake_score))
        self.manual_backward(d_loss)
        self.step_optimizer("discriminator")
        fooled = model.discriminator(fake)
        g_loss = self.criterion(fooled, torch.ones_like(fooled))
        self.manual_backward(g_loss)
        self.step_optimizer("generator")
        self.log("d_loss", d_loss)
        self.log("d_real", real_score.sigmoid().mean())
        self.log("d_fake", fake_score.sigmoid().mean())
        return Step(g_loss.detach(), fooled.detach(), torch.ones_like(fooled))

    def validation_step(self, model, batch):
        """The discriminator's loss on held-out real images and as many generated ones: near 1.39 (2 ln 2) when it
        cannot tell them apart. The noise is the same at every validation, so that epochs (and test.py) compare."""
        real, _ = batch
        fake, real_score = self.scores(model, real, torch.Generator(real.device).manual_seed(0))
        fake_score = model.discriminator(fake)
        loss = self.criterion(real_score, torch.ones_like(real_score)) + \
            self.criterion(fake_score, torch.zeros_like(fake_score))
        return Step(loss, fake_score, torch.zeros_like(fake_score))


class SampleImages(Callback):
    """After each validation, the generator's images for `count` fixed noise vectors, as a PNG grid in the run's log
    folder (rank 0 writes it). The noise comes from a generator of its own, so training's random state is
    untouched and a resumed run draws the same images."""

    def __init__(self, count: int = 64):
        self.count = count

    @torch.no_grad()
    def on_validation_end(self, trainer, values):
        if not trainer.dist.is_main:
            return
        model = trainer.model
        noise = torch.randn(self.count, model.latent, generator=torch.Generator().manual_seed(0)).to(trainer.device)
        was_training = model.training
        model.eval()
        images = model(noise)
        model.train(was_training)
        save_image(images * 0.5 + 0.5, trainer.run.log / f"samples_epoch{trainer.epoch}.png", nrow=8)
