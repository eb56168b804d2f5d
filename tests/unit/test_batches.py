"""Batches with elements after the target, as classic-template projects have them: `(input, target, mask)` reaches
a loss and metrics that take the mask, in training, validation and test.py; one that cannot take it is refused at
the check before writing, naming the batch's length."""
import pytest
import torch

import model.loss
import model.metric
import test as test_script
import train
from data_loader.builtin import CsvImageDataLoader

from helpers import fast_args, only_run


class MaskedDigits(CsvImageDataLoader):
    """The digits with a third element: a weight per sample, 0 for the first tenth of the samples."""

    def make_dataset(self, train, transform):
        images = super().make_dataset(train, transform)

        class Masked(torch.utils.data.Dataset):
            def __len__(self):
                return len(images)

            def __getitem__(self, index):
                image, label = images[index]
                return image, label, torch.tensor(float(index % 10 != 0))

        return Masked()


def masked_nll(output, target, mask):
    losses = torch.nn.functional.cross_entropy(output, target, reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def masked_accuracy(output, target, mask):
    return ((output.argmax(1) == target).float() * mask).sum() / mask.sum().clamp(min=1)


@pytest.fixture
def masked_project(monkeypatch):
    import data_loader.data_loaders

    for module, obj in ((data_loader.data_loaders, MaskedDigits), (model.loss, masked_nll),
                        (model.metric, masked_accuracy)):
        obj.__module__ = module.__name__
        monkeypatch.setattr(module, obj.__name__, obj, raising=False)
    seen = []
    real = masked_accuracy

    def spy(output, target, mask):
        seen.append(mask.clone())
        return real(output, target, mask)

    spy.__name__, spy.__module__ = "masked_accuracy", "model.metric"
    monkeypatch.setattr(model.metric, "masked_accuracy", spy)
    return seen


MASKED = ["data_loader.type=MaskedDigits", "loss=masked_nll", "metrics=[masked_accuracy]",
          "trainer.monitor=max val_masked_accuracy"]


def test_a_third_batch_element_reaches_the_loss_and_metrics_in_training_validation_and_test(masked_project, save_dir,
                                                                                             capsys):
    assert train.main(fast_args(save_dir, *MASKED, "trainer.epochs=1")) == 0
    history = only_run(save_dir).joinpath("checkpoint-latest.pth")
    assert masked_project and all(mask.shape == (len(mask),) and set(mask.tolist()) <= {0.0, 1.0}
                                  for mask in masked_project)
    assert any(0.0 in mask.tolist() for mask in masked_project)
    capsys.readouterr()
    assert test_script.main(["--resume", str(history), "--split", "val"]) == 0
    assert "masked_accuracy" in capsys.readouterr().out


def test_a_loss_that_cannot_take_the_extra_element_is_refused_naming_the_batch_length(masked_project, save_dir,
                                                                                       capsys):
    assert train.main(fast_args(save_dir, "data_loader.type=MaskedDigits", "loss=cross_entropy",
                                "metrics=[masked_accuracy]")) == 2
    err = capsys.readouterr().err
    assert "The batches hold 3 elements (input, target and 1 more)" in err
    assert "the loss is called as f(output, target, ...), which it cannot take (cross_entropy(output" in err
    assert not save_dir.exists()
    assert train.main(fast_args(save_dir, *MASKED[:2], "metrics=[accuracy]")) == 2
    assert "the metric 'accuracy' is called as f(output, target, ...)" in capsys.readouterr().err
