"""TensorBoard events read back with tensorboard's own reader: the tags, and values equal to the log's."""
import re

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import train

from helpers import fast_args


def test_events_hold_what_the_trainer_logged(save_dir, capsys):
    assert train.main(fast_args(save_dir, "trainer.tensorboard=true", "trainer.histograms=true",
                                "trainer.log_step=5", "trainer.monitor=min val_loss", "--run-id", "tb")) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    events = EventAccumulator(str(save_dir / "log" / "digits_cnn" / "tb"),
                              size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    steps_per_epoch = -(-int(re.search(r"Data per process: (\d+) training", out).group(1)) // 64)
    for epoch, line in enumerate(lines, start=1):
        logged = dict(re.findall(r"(\w+) (\d+\.\d{4})(?!\d)", line))
        for name, value in logged.items():
            split, metric = ("val", name[4:]) if name.startswith("val_") else ("train", name)
            if name == "lr":
                split, metric = "group0", "lr"
            event = events.Scalars(f"{metric}/{split}")[epoch - 1]
            assert event.step == epoch * steps_per_epoch
            assert abs(event.value - float(value)) <= 5e-5 + 1e-3 * (name == "lr"), (name, event.value, value)
    assert [e.step for e in events.Scalars("step/loss")] == list(range(5, 2 * steps_per_epoch + 1, 5))
    assert {"step/lr", "speed/samples_per_second", "speed/data_wait_share"} <= set(tags["scalars"])
    assert "inputs/train" in tags["images"] and len(events.Images("inputs/train")) == 2
    assert "weights/features.0.weight" in tags["histograms"] and "gradients/classifier.2.bias" in tags["histograms"]
    # The HParams tab: the run's hyperparameters and its best and last values.
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.args.lr"].number_value == 0.003
    assert start.hparams["arch.type"].string_value == "DigitsCNN"
    assert start.hparams["data_loader.args.batch_size"].number_value == 64
    best = events.Scalars("hparam/best_val_loss")[0].value
    assert abs(best - min(float(re.search(r"val_loss (\d+\.\d+)", line).group(1)) for line in lines)) <= 5e-5
