"""Events of a run on a Trainer subclass and on callbacks from the config, their state in checkpoints, and values
logged with `self.log` from a step or an event."""
import json

import pytest
import torch

import train
import trainer.custom
from trainer.callbacks import EVENTS, Callback
from trainer.checkpoint import load_checkpoint
from trainer.trainer import Trainer

from helpers import REPO, fast_args, only_run


def as_user_code(monkeypatch, *classes):
    """Define `classes` in trainer/custom.py, as a user would write them there."""
    for cls in classes:
        cls.__module__ = "trainer.custom"
        monkeypatch.setattr(trainer.custom, cls.__name__, cls, raising=False)


class Recorder(Callback):
    """Every event it sees, in order, with the step counter; and how many batches it saw, as its state."""

    def __init__(self, tag: str = "callback"):
        self.tag, self.seen, self.batches = tag, [], 0

    def __getattribute__(self, name):
        if name in EVENTS:
            return lambda trainer, *args: self.record(name, trainer, *args)
        return super().__getattribute__(name)

    def record(self, name, trainer, *args):
        self.seen.append((name, trainer.global_step))
        if name == "on_train_batch_end":
            self.batches += 1

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


class HookedTrainer(Trainer):
    """Defines two events itself and logs a value of its own from training and validation steps."""

    def on_train_epoch_start(self):
        self.callbacks[0].seen.append(("trainer's own on_train_epoch_start", self.global_step))

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad.norm() for p in self.model.parameters() if p.grad is not None]
        self.log("grad_norm", torch.stack(grads).norm())

    def validation_step(self, model, batch):
        step = super().validation_step(model, batch)
        self.log("confidence", step.output.softmax(1).max(1).values.mean())
        return step


def test_events_run_in_order_on_the_subclass_then_on_each_callback(monkeypatch, save_dir):
    as_user_code(monkeypatch, Recorder, HookedTrainer)
    built = {}
    real_init = Recorder.__init__
    monkeypatch.setattr(Recorder, "__init__", lambda self, *a, **k: (real_init(self, *a, **k), built.setdefault(
        len(built), self))[0])
    args = fast_args(save_dir, "trainer.type=HookedTrainer", "callbacks=[Recorder]", "trainer.epochs=1",
                     "trainer.accumulate_grad_batches=2", "trainer.monitor=max val_confidence")
    assert train.main(args) == 0
    seen = [name for name, _ in built[0].seen]
    assert seen[:3] == ["on_fit_start", "trainer's own on_train_epoch_start", "on_train_epoch_start"]
    batches = seen.count("on_train_batch_start")
    assert batches == seen.count("on_train_batch_end") == 20 and built[0].batches == 20
    assert seen.count("on_before_optimizer_step") == seen.count("on_after_optimizer_step") == 10
    first_end = seen.index("on_train_batch_end")
    assert seen[first_end - 1] == "on_train_batch_start"  # the first batch of a window of 2 takes no step
    assert seen[first_end + 1:first_end + 5] == ["on_train_batch_start", "on_before_optimizer_step",
                                                 "on_after_optimizer_step", "on_train_batch_end"]
    tail = seen[seen.index("on_train_epoch_end"):]
    assert tail == ["on_train_epoch_end", "on_validation_start", "on_validation_end", "on_save_checkpoint",
                    "on_fit_end"]  # one checkpoint made, written as checkpoint-latest and model_best
    state = load_checkpoint(only_run(save_dir) / "checkpoint-latest.pth")
    assert state["callbacks"] == [{"type": "Recorder", "state": {"batches": 20}}]
    history = [json.loads(line) for line in (only_run(save_dir).parents[2] / "log").glob("*/*/history.jsonl")
               .__next__().read_text().splitlines()]
    assert history[0]["grad_norm"] > 0 and 0.1 < history[0]["val_confidence"] <= 1
    assert state["monitor"]["best"] == history[0]["val_confidence"]


def test_callback_state_is_given_back_on_resume(monkeypatch, save_dir):
    as_user_code(monkeypatch, Recorder)
    built = []
    real_init = Recorder.__init__
    monkeypatch.setattr(Recorder, "__init__", lambda self, *a, **k: (real_init(self, *a, **k), built.append(self))[0])
    assert train.main(fast_args(save_dir, "callbacks=[{type: Recorder, args: {tag: x}}]", "trainer.epochs=1",
                                "--run-id", "r")) == 0
    run = only_run(save_dir)
    assert train.main(["--resume", str(run), "--epochs", "2"]) == 0
    assert [name for name, _ in built[-1].seen][:2] == ["on_load_checkpoint", "on_fit_start"]
    assert load_checkpoint(run / "checkpoint-latest.pth")["callbacks"][0]["state"] == {"batches": 40}


def test_a_misspelt_event_and_an_unknown_callback_are_refused_before_writing(monkeypatch, save_dir, capsys):
    class Typo(Callback):
        def on_train_epoch_strat(self, trainer):
            pass

    class TypoTrainer(Trainer):
        def on_validation_ends(self, values):
            pass

    as_user_code(monkeypatch, Typo, TypoTrainer)
    assert train.main(fast_args(save_dir, "callbacks=[Typo]")) == 2
    err = capsys.readouterr().err
    assert "callbacks[0], the callback 'Typo', defines on_train_epoch_strat, which is no event" in err
    assert "Did you mean 'on_train_epoch_start'" in err
    assert train.main(fast_args(save_dir, "trainer.type=TypoTrainer")) == 2
    assert "'TypoTrainer' defines on_validation_ends, which is no event of trainer/callbacks.py, so it would never " \
           "run. Did you mean 'on_validation_end'" in capsys.readouterr().err
    assert train.main(fast_args(save_dir, "callbacks=[Recordr]")) == 2
    assert "callbacks[0]" in capsys.readouterr().err
    assert not save_dir.exists()


def test_a_monitored_value_that_no_step_logs_is_refused_before_writing(save_dir, capsys):
    assert train.main(fast_args(save_dir, "trainer.monitor=max val_confidence")) == 2
    assert "trainer.monitor names 'val_confidence', which is not logged" in capsys.readouterr().err
    assert not save_dir.exists()


def test_the_exception_event_sees_the_error_that_ends_the_run(monkeypatch, save_dir):
    class NanTrainer(Trainer):
        errors = []

        def training_step(self, model, batch):
            step = super().training_step(model, batch)
            return step._replace(loss=step.loss * float("nan")) if self.global_step == 3 else step

        def on_exception(self, exception):
            self.errors.append(type(exception).__name__)

    as_user_code(monkeypatch, NanTrainer)
    assert train.main(fast_args(save_dir, "trainer.type=NanTrainer", "trainer.log_step=1")) == 1
    assert NanTrainer.errors == ["TrainingError"]


def test_a_name_taken_by_the_loss_or_a_metric_cannot_be_logged(monkeypatch, save_dir, capsys):
    class Clash(Trainer):
        def training_step(self, model, batch):
            step = super().training_step(model, batch)
            self.log("accuracy", 1.0)
            return step

    as_user_code(monkeypatch, Clash)
    assert train.main(fast_args(save_dir, "trainer.type=Clash")) == 2
    assert "log('accuracy'): that name is taken" in capsys.readouterr().err and not save_dir.exists()


def test_with_events_a_misspelt_monitor_stops_at_the_first_epoch_end_and_removes_the_new_run(monkeypatch, save_dir,
                                                                                             capsys):
    # Events may log values the check before writing cannot see, so the name is checked against the first epoch's.
    as_user_code(monkeypatch, Recorder, HookedTrainer)
    assert train.main(fast_args(save_dir, "trainer.type=HookedTrainer", "callbacks=[Recorder]",
                                "trainer.monitor=max val_confidenc")) == 2
    err = capsys.readouterr().err
    assert "trainer.monitor names 'val_confidenc', which is not logged" in err and "val_confidence" in err
    assert not list((save_dir / "models" / "digits_cnn").iterdir())


def test_log_outside_an_epoch_says_where_it_can_be_called(monkeypatch, save_dir):
    class Late(Callback):
        def on_fit_end(self, trainer, values):
            trainer.log("late", 1.0)

    as_user_code(monkeypatch, Late)
    with pytest.raises(ValueError, match=r"log\('late'\) was called outside an epoch's training or validation"):
        train.main(fast_args(save_dir, "callbacks=[Late]", "trainer.epochs=1"))  # a bug: its traceback shows where


class EpochCounter(Callback):
    """Counts the epochs whose training ended, as its state; its state_dict holds a NumPy number when asked to."""

    def __init__(self, numpy: bool = False):
        self.ended, self.numpy = 0, numpy

    def on_train_epoch_end(self, trainer, values):
        self.ended += 1

    def state_dict(self):
        import numpy as np

        return {"ended": np.int64(self.ended) if self.numpy else self.ended}

    def load_state_dict(self, state):
        self.ended = state["ended"]


def test_a_stop_during_validation_does_not_end_the_epochs_training_twice(monkeypatch, save_dir, recwarn):
    from interrupt import interrupting

    as_user_code(monkeypatch, EpochCounter)
    args = fast_args(save_dir, "callbacks=[EpochCounter]", "--run-id", "r")
    with interrupting("validation:1", "TERM"):
        assert train.main(args) != 0  # stopped in epoch 1's validation, saved after its training ended
    run = only_run(save_dir)
    assert load_checkpoint(run / "checkpoint-latest.pth")["callbacks"][0]["state"]["ended"] == 1
    recwarn.clear()
    assert train.main(["--resume", str(run)]) == 0
    assert load_checkpoint(run / "checkpoint-latest.pth")["callbacks"][0]["state"]["ended"] == 2  # not 3
    # The epoch's schedule steps before any optimizer step of the resumed process: no warning about the order.
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def test_a_callback_state_a_checkpoint_cannot_hold_is_refused_before_writing(monkeypatch, save_dir, capsys):
    as_user_code(monkeypatch, EpochCounter)
    assert train.main(fast_args(save_dir, "callbacks=[{type: EpochCounter, args: {numpy: true}}]")) == 2
    err = capsys.readouterr().err
    assert "callbacks[0], EpochCounter: its state_dict() holds a numpy.int64 at ['ended']" in err
    assert "weights_only=True" in err and not save_dir.exists()


def test_with_events_a_misspelt_monitor_read_by_the_scheduler_is_one_message(monkeypatch, save_dir, capsys):
    as_user_code(monkeypatch, EpochCounter)
    assert train.main(fast_args(save_dir, "callbacks=[EpochCounter]", "trainer.monitor=min val_los",
                                "lr_scheduler={type: ReduceLROnPlateau}")) == 2
    err = capsys.readouterr().err
    assert "trainer.monitor names 'val_los', which is not logged" in err and "Traceback" not in err
    assert not list((save_dir / "models" / "digits_cnn").iterdir())


def test_test_py_with_other_data_runs_a_validation_step_that_logs(monkeypatch, save_dir, capsys):
    import test as test_script

    as_user_code(monkeypatch, Recorder, HookedTrainer)
    assert train.main(fast_args(save_dir, "trainer.type=HookedTrainer", "callbacks=[Recorder]", "trainer.epochs=1",
                                "trainer.monitor=max val_confidence")) == 0
    capsys.readouterr()
    checkpoint = only_run(save_dir) / "checkpoint-latest.pth"
    assert test_script.main(["--resume", str(checkpoint), "-c", str(REPO / "configs" / "config.yaml")]) == 0
    assert "confidence" in capsys.readouterr().out


def test_callback_states_that_checkpoints_read_back_are_kept_and_no_event_runs_in_the_check(monkeypatch, save_dir):
    import collections

    from helpers import PER_PART_TRAINER, define_in_custom

    class Counting(Callback):
        """Counts optimizer steps in an OrderedDict and a Counter, which weights_only loading reads back."""

        steps = []

        def __init__(self):
            self.counts = collections.Counter()

        def on_before_optimizer_step(self, trainer, optimizer):
            Counting.steps.append(trainer.global_step)
            self.counts["steps"] += 1

        def state_dict(self):
            return collections.OrderedDict(counts=self.counts, device=torch.device("cpu"))

        def load_state_dict(self, state):
            self.counts = state["counts"]

    define_in_custom(monkeypatch, PER_PART_TRAINER)
    as_user_code(monkeypatch, Counting)
    assert train.main(fast_args(save_dir, "callbacks=[Counting]", "trainer.type=PerPartTrainer", "optimizer=null",
                                "lr_scheduler=null", "optimizers={all: {type: SGD, args: {lr: 0.1}}}",
                                "trainer.epochs=1")) == 0
    state = load_checkpoint(only_run(save_dir) / "checkpoint-latest.pth")
    assert Counting.steps == list(range(20))  # the check before writing stepped too, without the events
    assert state["callbacks"][0]["state"]["counts"] == {"steps": 20}


def test_a_value_logged_after_a_closure_optimizers_step_is_kept(monkeypatch, save_dir):
    class WeightNorm(Callback):
        def on_after_optimizer_step(self, trainer, optimizer):
            trainer.log("weight_norm", torch.cat([p.flatten() for p in trainer.model.parameters()]).norm())

    as_user_code(monkeypatch, WeightNorm)
    assert train.main(fast_args(save_dir, "callbacks=[WeightNorm]", "optimizer={type: LBFGS, args: {lr: 0.2, "
                                "max_iter: 3}}", "lr_scheduler=null", "trainer.epochs=1",
                                "trainer.monitor=min weight_norm")) == 0
    assert load_checkpoint(only_run(save_dir) / "checkpoint-latest.pth")["history"][0]["weight_norm"] > 0
