"""The training pipeline end to end, in-process: train.main / test.main on the bundled digits."""
import json
import re
import warnings

import pytest
import torch

import model.builtin.losses
import model.builtin.metrics
import model.metric
import test as test_script
import train
from model.factory import build_criterion
from trainer.checkpoint import load_checkpoint
from trainer.metric_tracker import MetricTracker
from utils.config import Config
from utils.run import new_run

from helpers import REPO, fast_args, only_run


def epoch_lines(save_dir):
    log_file = next((save_dir / "log").glob("*/*/train.log"))
    return [line for line in log_file.read_text().splitlines() if re.search(r" epoch \d+/\d+  loss", line)]


def logged(line, key):
    return float(re.search(rf"  {key} ([-\d.naif]+)", line).group(1))


def test_val_figures_of_test_py_match_the_trainer_log(save_dir, capsys):
    code = train.main(fast_args(save_dir, "trainer.epochs=3", "trainer.monitor=min val_loss", "--seed", "1"))
    assert code == 0
    run = only_run(save_dir)
    lines = epoch_lines(save_dir)
    best_line = min(lines, key=lambda line: logged(line, "val_loss"))
    capsys.readouterr()
    assert test_script.main(["--resume", str(run / "model_best.pth"), "--split", "val"]) == 0
    out = capsys.readouterr().out
    for key in ("loss", "accuracy", "top_k_acc"):
        printed = float(re.search(rf"^  {key}\s+([\d.]+)$", out, re.M).group(1))
        assert f"{printed:.4f}" == f"{logged(best_line, 'val_' + key):.4f}", (key, out, best_line)
    # BatchNorm statistics (buffers) were trained and saved with the weights.
    state = load_checkpoint(run / "model_best.pth")["model"]
    assert not torch.allclose(state["features.1.running_var"], torch.ones_like(state["features.1.running_var"]))
    assert int(state["features.1.num_batches_tracked"]) > 0
    assert test_script.main(["--resume", str(run)]) == 0
    assert "on the test split: 360 samples" in capsys.readouterr().out


def test_best_model_is_saved_whenever_the_monitor_improves_not_only_on_save_period(save_dir):
    assert train.main(fast_args(save_dir, "trainer.epochs=4", "trainer.save_period=3", "trainer.save_top_k=-1",
                                "trainer.monitor=min val_loss")) == 0
    run = only_run(save_dir)
    losses = [logged(line, "val_loss") for line in epoch_lines(save_dir)]
    best_epoch = losses.index(min(losses)) + 1
    best = load_checkpoint(run / "model_best.pth")
    assert best["loop"]["epoch"] == best_epoch + 1 and best["loop"]["batch_idx"] == 0
    assert best["monitor"]["best"] == pytest.approx(min(losses), abs=1e-4)
    assert sorted(p.name for p in run.glob("checkpoint-*.pth")) == ["checkpoint-epoch3.pth", "checkpoint-latest.pth"]


def test_save_top_k_keeps_the_k_best_epoch_checkpoints(save_dir):
    assert train.main(fast_args(save_dir, "trainer.epochs=4", "trainer.save_top_k=2",
                                "trainer.monitor=max val_accuracy")) == 0
    run = only_run(save_dir)
    accuracies = [logged(line, "val_accuracy") for line in epoch_lines(save_dir)]
    kept = load_checkpoint(run / "checkpoint-latest.pth")["monitor"]["kept"]
    assert len(kept) == 2 and sorted(v for v, _ in kept) == pytest.approx(sorted(accuracies)[-2:], abs=1e-4)
    assert {p.name for p in run.glob("checkpoint-epoch*.pth")} == {name for _, name in kept}


def test_early_stop_stops_after_exactly_early_stop_epochs_without_improvement(save_dir):
    # top-3-of-3 accuracy is always 1.0: it improves once (epoch 1) and never again.
    code = train.main(fast_args(save_dir, "trainer.epochs=10", "trainer.early_stop=2",
                                "metrics=[accuracy, {type: top_k_acc, args: {k: 10}}]",
                                "trainer.monitor=max val_top_k_acc_k10"))
    assert code == 0
    assert len(epoch_lines(save_dir)) == 3
    state = load_checkpoint(only_run(save_dir) / "checkpoint-latest.pth")
    assert state["monitor"]["not_improved"] == 2 and state["loop"]["epoch"] == 4


def test_resume_continues_in_the_same_run_with_scheduler_and_patience(save_dir):
    args = fast_args(save_dir, "trainer.monitor=max val_top_k_acc_k10", "trainer.early_stop=5",
                     "metrics=[{type: top_k_acc, args: {k: 10}}]",
                     "lr_scheduler={type: StepLR, args: {step_size: 1, gamma: 0.5}}", "--run-id", "first-run")
    assert train.main(args) == 0
    run = only_run(save_dir)
    assert run.name == "first-run"
    # As if killed between epoch 2's checkpoint and its history line: the resume restores the line from the checkpoint.
    history = save_dir / "log" / run.parent.name / run.name / "history.jsonl"
    history.write_text(history.read_text().splitlines(keepends=True)[0])
    assert train.main(["--resume", str(run), "trainer.epochs=4"]) == 0
    assert only_run(save_dir) == run
    state = load_checkpoint(run / "checkpoint-latest.pth")
    assert state["loop"]["epoch"] == 5 and state["monitor"]["not_improved"] == 3
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-3 * 0.5**4)
    lines = epoch_lines(save_dir)
    assert [re.search(r"epoch (\d)/", line).group(1) for line in lines] == ["1", "2", "3", "4"]
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert [round(row["val_loss"], 4) for row in rows] == [logged(line, "val_loss") for line in lines]
    assert "Resuming first-run" in (save_dir / "log" / run.parent.name / run.name / "train.log").read_text()


def test_reduce_lr_on_plateau_is_fed_the_monitored_metric_and_resumes(save_dir):
    args = fast_args(save_dir, "trainer.monitor=max val_top_k_acc_k10", "optimizer.args.lr=0.01",
                     "metrics=[{type: top_k_acc, args: {k: 10}}]",
                     "lr_scheduler={type: ReduceLROnPlateau, args: {mode: max, patience: 0, factor: 0.1}}")
    assert train.main(args) == 0
    run = only_run(save_dir)
    assert train.main(["--resume", str(run), "trainer.epochs=3"]) == 0
    state = load_checkpoint(run / "checkpoint-latest.pth")
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.1**2)


def poison_loss(monkeypatch, bad_calls, factor=float("nan")):
    """Multiply the loss by `factor` (default: make it non-finite) on the given call numbers (counted from 1)."""
    calls = {"n": 0}
    real = model.builtin.losses.cross_entropy

    def loss(output, target):
        calls["n"] += 1
        value = real(output, target)
        return value * factor if bad_calls(calls["n"]) else value

    monkeypatch.setattr(model.builtin.losses, "cross_entropy", loss)


def test_nan_loss_stops_without_touching_the_best_checkpoint(save_dir, monkeypatch, capsys):
    assert train.main(fast_args(save_dir, "trainer.monitor=min val_loss")) == 0
    run = only_run(save_dir)
    best_bytes = (run / "model_best.pth").read_bytes()
    poison_loss(monkeypatch, lambda n: n >= 5)
    capsys.readouterr()
    assert train.main(["--resume", str(run), "trainer.epochs=4"]) == 1
    err = capsys.readouterr().err
    assert "training loss became nan in epoch 3" in err and "on_nan: skip_batch" in err
    assert (run / "model_best.pth").read_bytes() == best_bytes
    latest = load_checkpoint(run / "checkpoint-latest.pth")
    assert latest["loop"]["epoch"] == 3
    assert all(torch.isfinite(t).all() for t in latest["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("monitor", ["min val_loss", "off"])
def test_non_finite_buffers_are_never_saved(save_dir, monkeypatch, capsys, monitor):
    # BatchNorm's running_var can overflow while the loss stays finite; every later checkpoint would be poisoned.
    from trainer.trainer import Trainer

    step = Trainer.optimizer_step

    def overflowing_step(self):
        step(self)
        if self.global_step == 7:
            self.model.features[1].running_var.fill_(float("inf"))

    monkeypatch.setattr(Trainer, "optimizer_step", overflowing_step)
    assert train.main(fast_args(save_dir, "trainer.save_every_steps=5", f"trainer.monitor={monitor}")) == 1
    err = capsys.readouterr().err
    assert "hold NaN or Inf values (features.1.running_var) at step 10, so checkpoint-latest.pth was not written" in err
    latest = load_checkpoint(only_run(save_dir) / "checkpoint-latest.pth")
    assert latest["loop"]["global_step"] == 5
    assert all(torch.isfinite(t).all() for t in latest["model"].values() if t.is_floating_point())


def test_skip_batch_skips_non_finite_losses(save_dir, monkeypatch):
    poison_loss(monkeypatch, lambda n: n % 7 == 0)
    assert train.main(fast_args(save_dir, "trainer.on_nan=skip_batch")) == 0
    lines = epoch_lines(save_dir)
    assert all("batches with a non-finite loss skipped" in line for line in lines)
    assert all(logged(line, "loss") < 3 for line in lines)


def test_a_failed_save_stops_training_and_keeps_the_previous_checkpoint(save_dir, monkeypatch, capsys):
    from trainer import state
    from utils import files

    real_save, saves = state.save_checkpoint, {"n": 0}

    def no_space(fd):
        raise OSError(28, "No space left on device")

    def second_save_fails_on_fsync(state, paths):  # epoch 1 writes latest; epoch 2's write fails half-way
        saves["n"] += 1
        if saves["n"] == 2:
            monkeypatch.setattr(files.os, "fsync", no_space)
        return real_save(state, paths)

    monkeypatch.setattr(state, "save_checkpoint", second_save_fails_on_fsync)
    assert train.main(fast_args(save_dir, "trainer.save_period=0")) == 1
    assert "No space left on device" in capsys.readouterr().err
    run = only_run(save_dir)
    assert load_checkpoint(run / "checkpoint-latest.pth")["loop"]["epoch"] == 2
    assert not list(run.glob(".*tmp*"))


def test_a_failed_history_write_stops_training_with_the_resume_command(save_dir, monkeypatch, capsys):
    from trainer import state

    real_write = state.atomic_write

    def no_space_for_history(path, data):
        if path.name == state.HISTORY and data:  # the first epoch's line
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(state, "atomic_write", no_space_for_history)
    assert train.main(fast_args(save_dir)) == 1
    run = only_run(save_dir)
    assert f"history.jsonl': No space left on device. Training stopped; the checkpoints are intact. Free disk " \
           f"space (or fix the folder's permissions) and continue with: python train.py --resume {run}" \
        in capsys.readouterr().err
    assert load_checkpoint(run / "checkpoint-latest.pth")["loop"]["epoch"] == 2


def test_resume_with_a_different_model_is_refused(save_dir, capsys):
    assert train.main(fast_args(save_dir, "trainer.epochs=1")) == 0
    run = only_run(save_dir)
    code = train.main(["--resume", str(run), *fast_args(save_dir, "arch.args.width=16")])
    assert code == 2
    assert "arch.args to {'num_classes': 10, 'width': 16" in capsys.readouterr().err
    code = train.main(["--resume", str(run), *fast_args(save_dir, "optimizer.type=SGD")])
    assert code == 2
    assert "optimizer.type to 'SGD', but the checkpoint was trained with 'AdamW'" in capsys.readouterr().err


def test_seed_comes_from_the_config(save_dir):
    def first_weights(seed):
        args = fast_args(save_dir, "trainer.epochs=1", "optimizer.args.lr=0", "--seed", str(seed),
                         "--run-id", f"s{seed}-{len(list(save_dir.glob('models/*/*')))}")
        assert train.main(args) == 0
        run = sorted((save_dir / "models").glob("*/*"), key=lambda p: p.stat().st_mtime)[-1]
        return load_checkpoint(run / "checkpoint-latest.pth")["model"]["features.0.weight"]

    assert torch.equal(first_weights(1), first_weights(1))
    assert not torch.equal(first_weights(1), first_weights(2))


def test_run_ids_never_collide(tmp_path):
    runs = [new_run(tmp_path, "x") for _ in range(3)]
    assert len({r.models for r in runs}) == 3 and all(r.log.is_dir() for r in runs)


def test_metrics_are_weighted_by_sample_count():
    tracker = MetricTracker({"accuracy": model.builtin.metrics.accuracy}, torch.device("cpu"))
    tracker.update(torch.tensor(1.0), torch.tensor([[1.0, 0], [1, 0], [0, 1]]), torch.tensor([0, 1, 0]))
    tracker.update(torch.tensor(3.0), torch.tensor([[0.0, 1]]), torch.tensor([1]))
    result = tracker.result()
    assert result["accuracy"] == pytest.approx(2 / 4) and result["loss"] == pytest.approx((3 * 1 + 3) / 4)


def test_a_summed_metric_of_your_own_is_exact_over_the_epoch():
    class SumOfBatchMaxima(model.builtin.metrics.SummedMetric):
        """Each batch's largest target, added up: a figure that no weighted mean of batch values gives."""

        def sums(self, output, target):
            return target.max().reshape(1)

        def finish(self, totals):
            return totals[0]

    tracker = MetricTracker({"largest": SumOfBatchMaxima()}, torch.device("cpu"))
    tracker.update(torch.tensor(0.0), torch.zeros(3, 1), torch.tensor([1.0, 2.0, 3.0]))
    tracker.update(torch.tensor(0.0), torch.zeros(1, 1), torch.tensor([4.0]))
    assert tracker.result()["largest"] == 7.0  # the sums add up: 3 + 4, not (3 * 3 + 4) / 4


def test_wrong_args_for_a_summed_metric_and_an_old_style_one_are_named(tmp_path, monkeypatch):
    from model.factory import build_metrics
    from utils.config import Config
    from utils.errors import ConfigError

    config = Config.load(REPO / "configs" / "config.yaml", ["metrics=[{type: rmse, args: {k: 3}}]"])
    with pytest.raises(ConfigError, match=r"wrong args for metrics\[0\] 'RootMeanSquaredError'.*'k'"):
        build_metrics(config)

    def my_rmse(output, target):
        return output.new_tensor(0.0)

    my_rmse.sums, my_rmse.finish = lambda output, target: output.new_zeros(2), lambda totals: totals[0]
    monkeypatch.setattr(model.metric, "my_rmse", my_rmse, raising=False)
    my_rmse.__module__ = "model.metric"
    with pytest.raises(ConfigError, match=r"'my_rmse' carries sums and finish as attributes.*SummedMetric subclass"):
        build_metrics(Config.load(REPO / "configs" / "config.yaml", ["metrics=[my_rmse]"]))


def test_plateau_scheduler_per_step_and_changed_scheduler_on_resume_are_refused(save_dir, capsys):
    plateau = "lr_scheduler={type: ReduceLROnPlateau, interval: step}"
    assert train.main(fast_args(save_dir, plateau)) == 2
    assert "set lr_scheduler.interval: epoch" in capsys.readouterr().err
    assert train.main(fast_args(save_dir, "trainer.epochs=1")) == 0
    code = train.main(["--resume", str(only_run(save_dir)),
                       *fast_args(save_dir, "lr_scheduler={type: StepLR, args: {step_size: 1}}")])
    assert code == 2 and "lr_scheduler.type to 'StepLR'" in capsys.readouterr().err


def test_an_fp16_step_skipped_for_overflow_does_not_warn_about_the_scheduler(save_dir, monkeypatch):
    # A loss near 1e34 is finite, but scaled by the gradient scaler (65536) it overflows: the first optimizer
    # step is skipped, as often at the start of fp16 training, while the per-step scheduler steps.
    poison_loss(monkeypatch, lambda n: n <= 3, factor=1e34)  # the check (a training and a validation batch), then
    # the first batch
    one_cycle = "lr_scheduler={type: OneCycleLR, args: {max_lr: 0.01, total_steps: 20}, interval: step}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        assert train.main(fast_args(save_dir, "trainer.amp=fp16", "trainer.epochs=1", one_cycle)) == 0
        assert warnings.filters == filters  # silenced where it is raised, not for the whole process
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert load_checkpoint(only_run(save_dir) / "checkpoint-latest.pth")["scaler"]["scale"] < 65536.0


def test_fp16_window_with_every_batch_skipped_does_not_step(save_dir, monkeypatch):
    poison_loss(monkeypatch, lambda n: n <= 42)  # the check's two calls and the whole first epoch (20 batches of 2)
    args = fast_args(save_dir, "trainer.amp=fp16", "trainer.on_nan=skip_batch", "trainer.accumulate_grad_batches=2")
    assert train.main(args) == 0
    state = load_checkpoint(only_run(save_dir) / "checkpoint-latest.pth")
    assert 0 < state["loop"]["global_step"] < 20


LBFGS = "optimizer={type: LBFGS, args: {lr: 0.2, max_iter: 4, history_size: 10}}"


def test_a_closure_optimizer_trains_from_the_config_alone_and_clips_inside_its_closure(save_dir, monkeypatch):
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: clipped.append(1) or real_clip(*a, **k))
    assert train.main(fast_args(save_dir, LBFGS, "lr_scheduler=null", "trainer.epochs=1",
                                "trainer.grad_clip_norm=1.0")) == 0
    state = load_checkpoint(only_run(save_dir) / "checkpoint-latest.pth")
    steps = state["loop"]["global_step"]
    assert steps == 20 and state["optimizer"]["state"][0]["func_evals"] > steps  # several evaluations per step
    assert len(clipped) == state["optimizer"]["state"][0]["func_evals"]
    assert state["history"][0]["loss"] < 2.3


@pytest.mark.parametrize("setting", ["trainer.amp=fp16", "trainer.accumulate_grad_batches=2",
                                     "trainer.on_nan=skip_batch"])
def test_settings_a_closure_optimizer_cannot_honour_are_refused_before_writing(save_dir, capsys, setting):
    assert train.main(fast_args(save_dir, LBFGS, setting)) == 2
    err = capsys.readouterr().err
    assert f"({setting}): the optimizer 'LBFGS' re-evaluates the loss through a closure" in err
    assert not save_dir.exists()


def test_a_value_logged_from_a_step_is_the_first_evaluations_under_a_closure_optimizer(save_dir, monkeypatch):
    import trainer.custom
    from trainer.trainer import Trainer

    class Logging(Trainer):
        def training_step(self, model, batch):
            step = super().training_step(model, batch)
            self.log("step_loss", step.loss)
            return step

    Logging.__module__ = "trainer.custom"
    monkeypatch.setattr(trainer.custom, "Logging", Logging, raising=False)
    assert train.main(fast_args(save_dir, LBFGS, "lr_scheduler=null", "trainer.epochs=1", "trainer.type=Logging",
                                "data_loader.args.drop_last=true")) == 0  # equal batches: equal means
    history = load_checkpoint(only_run(save_dir) / "checkpoint-latest.pth")["history"][0]
    assert history["step_loss"] == pytest.approx(history["loss"], rel=1e-6)  # both the first evaluation's


def test_a_named_closure_optimizer_is_clipped_inside_its_closure(save_dir, monkeypatch):
    from helpers import define_in_custom

    define_in_custom(monkeypatch, """
from trainer.trainer import Trainer


class ClosureTrainer(Trainer):
    def training_step(self, model, batch):
        def closure():
            self.optimizers["all"].zero_grad()
            loss = super(ClosureTrainer, self).training_step(model, batch).loss
            self.manual_backward(loss)
            return loss
        self.step_optimizer("all", closure)
        return super().training_step(model, batch)
""")
    norms = []
    real_step = torch.optim.LBFGS.step

    def watched(self, closure):
        def seen():
            loss = closure()
            norms.append(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]]).norm().item())
            return loss
        return real_step(self, seen)

    monkeypatch.setattr(torch.optim.LBFGS, "step", watched)
    assert train.main(fast_args(save_dir, "trainer.type=ClosureTrainer", "optimizer=null", "lr_scheduler=null",
                                "optimizers={all: {type: LBFGS, args: {lr: 0.2, max_iter: 3}}}", "trainer.epochs=1",
                                "trainer.grad_clip_norm=0.01")) == 0
    assert len(norms) > 20 and max(norms) <= 0.01 + 1e-6  # every evaluation LBFGS saw was clipped


def test_the_run_says_how_much_disk_its_checkpoints_take_at_most(save_dir, caplog):
    caplog.set_level("INFO")
    assert train.main(fast_args(save_dir, "trainer.epochs=3", "trainer.save_top_k=2")) == 0
    run = only_run(save_dir)
    told = [r.getMessage() for r in caplog.records if "Each checkpoint takes" in r.getMessage()]
    assert len(told) == 1, told  # once, after the first epoch
    each, total = re.fullmatch(rf"Each checkpoint takes ([\d.]+) MiB; the run keeps at most 4 in {re.escape(str(run))}, "
                               r"([\d.]+) MiB: checkpoint-latest.pth, model_best.pth and the 2 best epochs' "
                               r"\(trainer.save_top_k\)\.", told[0]).groups()
    size = (run / "checkpoint-latest.pth").stat().st_size / 2**20  # a little larger: its history grew since
    assert float(each) == pytest.approx(size, rel=0.05) and float(total) == pytest.approx(4 * float(each), rel=0.01)
    assert len(list(run.glob("*.pth"))) == 4


def test_a_resume_rewrites_a_best_file_left_at_an_earlier_tie(save_dir, monkeypatch, caplog):
    """A stop between writing checkpoint-latest.pth and model_best.pth, at an epoch that ties the best, leaves the
    earlier epoch in model_best.pth: the resume writes the later one, as the run left alone has it."""
    def constant(output, target):
        return 0.5

    constant.__module__ = "model.metric"
    monkeypatch.setattr(model.metric, "constant", constant, raising=False)
    args = fast_args(save_dir, "metrics=[constant]", "trainer.monitor=max val_constant", "trainer.save_top_k=-1",
                     "trainer.epochs=3", "--run-id", "r")
    assert train.main(args) == 0
    run = only_run(save_dir)
    assert len(load_checkpoint(run / "model_best.pth")["history"]) == 3  # the later of the ties
    (run / "checkpoint-epoch2.pth").replace(run / "model_best.pth")  # as a stop between the two writes leaves it
    caplog.set_level("WARNING")
    assert train.main(["--resume", str(run), "--epochs", "3"]) == 0
    assert "model_best.pth does not hold the best val_constant" in caplog.text
    assert len(load_checkpoint(run / "model_best.pth")["history"]) == 3


def test_a_loss_takes_its_class_weights_as_a_list_and_keeps_them_on_the_training_device(save_dir, capsys):
    weighted = "loss={type: CrossEntropyLoss, args: {weight: [1, 1, 1, 1, 1, 1, 1, 1, 1, 3]}}"
    criterion = build_criterion(Config.load(REPO / "configs" / "config.yaml", [weighted]))
    assert torch.equal(criterion.weight, torch.tensor([1.0] * 9 + [3.0]))
    binary = build_criterion(Config.load(REPO / "configs" / "config.yaml",
                                         ["loss={type: BCEWithLogitsLoss, args: {pos_weight: [2.5]}}"]))
    assert binary.pos_weight.dtype == torch.float32 and binary.pos_weight.tolist() == [2.5]
    assert train.main(fast_args(save_dir, weighted, "trainer.epochs=1", "--run-id", "w")) == 0
    run = save_dir / "models" / "digits_cnn" / "w"
    assert test_script.main(["--resume", str(run), "--no-report"]) == 0
    assert "on the test split: 360 samples" in capsys.readouterr().out
