"""The language model's state from batch to batch, and its samples, through the documented extension points:
events of a Trainer subclass that reset the state when an epoch or a validation starts, the state in the subclass's
checkpoint state (docs/training_step.md, docs/callbacks.md), and a callback that writes generated text."""
import torch

from trainer.callbacks import Callback
from trainer.trainer import Step, Trainer


def detached(state):
    return None if state is None else tuple(t.detach() for t in state)


class LanguageModelTrainer(Trainer):
    """Each batch goes on from the LSTM state the batch before left (back-propagation stops at the batch's start).
    Training and validation keep a state each; both start empty with their pass over the data."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state, self.val_state = None, None

    def on_train_epoch_start(self):
        self.state = None

    def on_validation_start(self):
        self.val_state = None

    def advance(self, model, batch, state):
        """Each character's scores and target, one row per character, and the state after the batch."""
        codes, target = batch
        scores, state = model(codes, state)
        return scores.flatten(0, 1), target.flatten(), detached(state)

    def training_step(self, model, batch):
        output, target, self.state = self.advance(model, batch, self.state)
        return Step(self.compute_loss(output, target), output, target)

    def validation_step(self, model, batch):
        output, target, self.val_state = self.advance(model, batch, self.val_state)
        return Step(self.criterion(output, target), output, target)

    def state_dict(self):
        """The training state in the middle of an epoch, so that a resume there goes on with it."""
        return {**super().state_dict(), "lstm_state": self.state}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.state = state["lstm_state"]


class GenerateText(Callback):
    """After each validation, `length` characters after `prompt`, drawn from the model with a generator of its own
    (training's random state is untouched), appended to samples.txt in the run's log folder by rank 0."""

    def __init__(self, prompt: str = "The ", length: int = 200):
        self.prompt, self.length = prompt, length

    def on_validation_end(self, trainer, values):
        if not trainer.dist.is_main:
            return
        model = trainer.model
        was_training = model.training
        model.eval()
        text = model.generate(self.prompt, self.length, torch.Generator().manual_seed(trainer.epoch))
        model.train(was_training)
        with open(trainer.run.log / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"--- epoch {trainer.epoch}, val_perplexity {values['val_perplexity']:.3f}\n{text}\n")
