import json
import re

import pytest
import torch
import yaml

import model.builtin.models as module_arch
from utils.config import Config
from utils.config_file import parse_value
from utils.errors import ConfigError

from helpers import CLASSIC, ORDINARY_LOADER, REPO

MINIMAL = """
arch: {type: DigitsCNN}
data_loader: {type: CsvImageDataLoader, args: {data_dir: data/digits}}
optimizer: {type: Adam, args: {lr: 1e-3}}
loss: cross_entropy
"""


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_fill_missing_keys_and_scientific_floats_are_floats(tmp_path):
    config = Config.load(write(tmp_path, MINIMAL))
    assert config["optimizer"]["args"]["lr"] == pytest.approx(1e-3)
    assert isinstance(config["optimizer"]["args"]["lr"], float)
    assert config["trainer"]["epochs"] == 10 and config["trainer"]["monitor"] == "off"
    assert config["arch"]["args"] == {}


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, MINIMAL + "trainer:\n  epochs: 3\n   save_dir: x\n")
    with pytest.raises(ConfigError, match=r"c\.yaml, line 8, column \d+: invalid YAML"):
        Config.load(path)


def test_json_syntax_error_names_line(tmp_path):
    path = write(tmp_path, '{\n "name": "x",\n "arch": {"type": "MnistModel"}\n "loss": "nll_loss"\n}', "c.json")
    with pytest.raises(ConfigError, match=r"c\.json, line 4, column 2: invalid JSON"):
        Config.load(path)


def test_overrides_parse_values_as_yaml_and_may_add_args(tmp_path):
    config = Config.load(write(tmp_path, MINIMAL), ["optimizer.args.lr=3e-4", "trainer.epochs=5",
                                                    "optimizer.args.betas=[0.8, 0.9]", "trainer.monitor=min val_loss"])
    assert config["optimizer"]["args"] == {"lr": 3e-4, "betas": [0.8, 0.9]}
    assert config["trainer"]["epochs"] == 5
    assert config["trainer"]["monitor"] == "min val_loss"


def test_short_flags_set_their_keys(tmp_path):
    config = Config.load(write(tmp_path, MINIMAL), lr=0.5, bs=7, epochs=2, device="cpu")
    assert config["optimizer"]["args"]["lr"] == 0.5
    assert config["data_loader"]["args"]["batch_size"] == 7
    assert config["trainer"]["epochs"] == 2 and config["device"] == "cpu"


def test_a_key_set_twice_on_the_command_line_to_different_values_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"command line: --epochs 1 and trainer\.epochs=2 both set 'trainer\.epochs', "
                                          r"to different values; give it once\."):
        Config.load(write(tmp_path, MINIMAL), ["trainer.epochs=2"], epochs=1)
    assert Config.load(write(tmp_path, MINIMAL), ["trainer.epochs=2"], epochs=2)["trainer"]["epochs"] == 2


def test_unknown_override_key_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trainer\.epoch'.*Did you mean 'trainer\.epochs'"):
        Config.load(write(tmp_path, MINIMAL), ["trainer.epoch=5"])
    with pytest.raises(ConfigError, match="key.path=value"):
        Config.load(write(tmp_path, MINIMAL), ["trainer.epochs"])


def test_unknown_key_in_file_is_refused(tmp_path):
    # The suggestion is the whole key, as it would be typed.
    with pytest.raises(ConfigError, match=r"unknown key 'trainer\.early_stopping'\. Did you mean 'trainer\.early_stop'\?"):
        Config.load(write(tmp_path, MINIMAL + "trainer: {early_stopping: 3}\n"))


def test_wrong_choice_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="trainer.amp' must be one of off, bf16, fp16"):
        Config.load(write(tmp_path, MINIMAL), ["trainer.amp=fp8"])
    with pytest.raises(ConfigError, match="trainer.monitor"):
        Config.load(write(tmp_path, MINIMAL), ["trainer.monitor=val_loss"])
    with pytest.raises(ConfigError, match=r"'trainer\.verbosity' must be one of 0, 1, 2; got 5"):
        Config.load(write(tmp_path, MINIMAL), ["trainer.verbosity=5"])


def test_init_obj_builds_from_the_sections_modules(tmp_path):
    config = Config.load(write(tmp_path, MINIMAL), ["arch.args.width=4"])
    model = config.init_obj("arch")
    assert isinstance(model, module_arch.DigitsCNN)
    optimizer = config.init_obj("optimizer", params=model.parameters())
    assert isinstance(optimizer, torch.optim.Adam)


@pytest.mark.parametrize("name", ["os.system", "__import__", "_private", "eval"])
def test_names_outside_the_modules_are_never_imported(tmp_path, name):
    config = Config.load(write(tmp_path, MINIMAL), [f"optimizer.type={name}"])
    with pytest.raises(ConfigError, match=f"unknown optimizer type '{name}'"):
        config.init_obj("optimizer", params=[torch.zeros(1, requires_grad=True)])


def test_unknown_type_suggests_close_names(tmp_path):
    config = Config.load(write(tmp_path, MINIMAL), ["optimizer.type=Adamm"])
    with pytest.raises(ConfigError, match=r"Did you mean 'Adam'"):
        config.init_obj("optimizer", params=[torch.zeros(1, requires_grad=True)])


def test_wrong_args_name_the_key_and_the_accepted_arguments(tmp_path):
    config = Config.load(write(tmp_path, MINIMAL), ["arch.args.depth=3"])
    with pytest.raises(ConfigError, match=r"wrong args for arch type 'DigitsCNN'.*depth.*It accepts: num_classes"):
        config.init_obj("arch")
    config = Config.load(write(tmp_path, MINIMAL), ["optimizer.args.lr=-1"])
    with pytest.raises(ConfigError, match=r"optimizer type 'Adam' refused its arguments: Invalid learning rate"):
        config.init_obj("optimizer", params=[torch.zeros(1, requires_grad=True)])
    config = Config.load(write(tmp_path, MINIMAL), ["optimizer.args.lr=abc"])
    with pytest.raises(ConfigError, match=r"refused its arguments: .*\. optimizer\.args\.lr is 'abc': text where a "
                                          r"number is expected\. Check optimizer\.args\."):
        config.init_obj("optimizer", params=[torch.zeros(1, requires_grad=True)])


def test_code_supplied_args_cannot_be_set_in_config(tmp_path):
    config = Config.load(write(tmp_path, MINIMAL), ["optimizer.args.params=1"])
    with pytest.raises(ConfigError, match="set by the code"):
        config.init_obj("optimizer", params=[torch.zeros(1, requires_grad=True)])


def test_classic_template_json_loads_unchanged(tmp_path):
    path = write(tmp_path, json.dumps(CLASSIC, indent=4), "config.json")
    config = Config.load(path)
    assert config["n_gpu"] == 1 and config["device"] == "auto"
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert config["trainer"]["monitor"] == "min val_loss"


def test_parse_value():
    assert parse_value("1e-3") == 1e-3
    assert parse_value("true") is True
    assert parse_value("null") is None
    assert parse_value("cuda:1") == "cuda:1"
    assert parse_value("2024-06-01") == "2024-06-01"
    assert parse_value("off") == "off" and parse_value("yes") == "yes" and parse_value("false") is False
    assert parse_value("[1, 2]") == [1, 2]


def test_flags_and_overrides_may_be_mixed_in_any_order():
    import train

    args = train.parse_args(["trainer.epochs=3", "-c", "x.yaml", "--run-id", "a-b", "optimizer.args.lr=1", "--lr", "2"])
    assert args.overrides == ["trainer.epochs=3", "optimizer.args.lr=1"]
    assert args.run_id == "a-b" and args.lr == 2.0 and args.config == "x.yaml"
    assert train.parse_args(["--batch-size", "8"]).bs == 8


def test_user_modules_offer_what_they_define_without_all(monkeypatch, caplog):
    import sys
    import types

    from utils import registry

    user = types.ModuleType("model.model")
    exec("from torch import nn\nclass Net(nn.Module):\n    pass\nclass DigitsCNN(nn.Module):\n    pass\n",
         user.__dict__)
    monkeypatch.setitem(sys.modules, "model.model", user)
    monkeypatch.setattr(registry, "_replaced", set())
    assert registry.lookup("Net", "arch").__module__ == "model.model"  # no __all__ needed
    with caplog.at_level("INFO"):
        assert registry.lookup("DigitsCNN", "arch") is user.DigitsCNN
    assert "arch: using your DigitsCNN from model/model.py; it replaces the template's DigitsCNN" in caplog.text
    with pytest.raises(ConfigError, match="unknown arch type 'Module'"):  # imported from torch, not offered
        registry.lookup("Module", "arch")


def test_unknown_top_level_keys_are_kept_and_near_misses_refused(tmp_path):
    config = Config.load(write(tmp_path, MINIMAL + "regularize: {l2: 0.01}\ninitializer: xavier\n"))
    assert config["regularize"] == {"l2": 0.01} and config["initializer"] == "xavier"
    from utils.schema import unused_keys

    assert unused_keys(config.data) == ["regularize", "initializer"]
    with pytest.raises(ConfigError, match=r"unknown key 'trainr'. Did you mean 'trainer'"):
        Config.load(write(tmp_path, MINIMAL + "trainr: {epochs: 3}\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.epoch'"):  # below the top level: always an error
        Config.load(write(tmp_path, MINIMAL), ["trainer.epoch=3"])


def test_torch_only_sections_do_not_invite_defining_a_type_there(tmp_path):
    config = Config.load(write(tmp_path, MINIMAL), ["optimizer.type=Adamm"])
    with pytest.raises(ConfigError) as error:
        config.init_obj("optimizer", params=[torch.zeros(1, requires_grad=True)])
    assert "looked up in torch.optim only" in str(error.value) and "Define" not in str(error.value)


def test_a_config_that_is_not_utf8_text_is_named(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(MINIMAL.encode() + "name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml' is not UTF-8 text: line 6 holds the byte 0xe9\. A config"):
        Config.load(latin)
    binary = tmp_path / "image.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ConfigError, match=r"image\.yaml' is not UTF-8 text.*check that -c names your config"):
        Config.load(binary)


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    path = write(tmp_path, MINIMAL + "trainer:\n  monitor: max val_accuracy\nname: x\ntrainer:\n  epochs: 5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: the key 'trainer' is written twice in one mapping, on lines 6 "
                                          r"and 9; the second would silently replace the first"):
        Config.load(path)
    with pytest.raises(ConfigError, match=r"the key 'lr' is written twice in one mapping, on line 4;"):
        Config.load(write(tmp_path, MINIMAL.replace("{lr: 1e-3}", "{lr: 1e-3, lr: 1e-2}")))
    with pytest.raises(ConfigError, match=r"c\.json: the key 'name' is written twice in one object"):
        Config.load(write(tmp_path, json.dumps(CLASSIC)[:-1] + ', "name": "again"}', "c.json"))
    merged = MINIMAL.replace("optimizer: {type: Adam, args: {lr: 1e-3}}",
                             "base: &base {type: Adam, args: {lr: 1e-3}}\noptimizer:\n  <<: *base\n  type: AdamW")
    assert Config.load(write(tmp_path, merged))["optimizer"]["type"] == "AdamW"  # a merge key may be overridden


@pytest.mark.parametrize("key, message", [
    ("trainer", r"'trainer' must be a mapping of settings \(type, args, epochs, \.\.\.\), got None"),
    ("arch", "'arch' is required and may not be null"),
    ("optimizer", "set one of 'optimizer' \\(one optimizer, which the loop steps\\) and 'optimizers'"),
    ("data_loader", "'data_loader' is required and may not be null"),
    ("name", "'name' must be a folder name such as digits_cnn.*got None"),
    ("trainer.save_dir", r"'trainer\.save_dir' must be a folder path such as saved/; got None"),
])
def test_null_sections_and_names_are_refused(tmp_path, key, message):
    data = yaml.safe_load(MINIMAL)
    if key == "trainer.save_dir":
        data["trainer"] = {"save_dir": None}
    else:
        data[key] = None
    with pytest.raises(ConfigError, match=r"c\.yaml: " + message):
        Config.load(write(tmp_path, yaml.safe_dump(data)))


def test_a_whole_number_name_is_a_folder_name_and_paths_are_not(tmp_path):
    assert Config.load(write(tmp_path, MINIMAL + "name: 2024\n"))["name"] == "2024"
    assert Config.load(write(tmp_path, MINIMAL), ["name=mnist/baseline"])["name"] == "mnist/baseline"
    with pytest.raises(ConfigError, match=r"'name' must be a folder name.*got 1\.1\. Quote a number"):
        Config.load(write(tmp_path, MINIMAL + "name: 1.10\n"))
    for name in ["../../x", "/tmp/x", "a/../b", "a\\b", ".", ""]:
        with pytest.raises(ConfigError, match=r"'name' must be a folder name .*without '\.\.', '\\', a leading"):
            Config.load(write(tmp_path, MINIMAL), [f"name={name}"])


@pytest.mark.parametrize("override, message", [
    ("seed=1.5", r"'seed' must be a whole number from 0 to 2\*\*63 - 1, or null to draw one; got 1\.5"),
    ("seed=abc", r"'seed' must be a whole number .*; got 'abc'"),
    ("seed=12345678901234567890", r"'seed' must be a whole number .*; got 12345678901234567890"),
    ("trainer.save_every_minutes=abc", r"'trainer\.save_every_minutes' must be a number >= 0 \(0: off\); got 'abc'"),
    ("trainer.grad_clip_norm=abc", r"'trainer\.grad_clip_norm' must be a number > 0, or null \(no clipping\)"),
])
def test_bad_values_are_refused_naming_the_override(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(f"command line ({override}): ") + message):
        Config.load(write(tmp_path, MINIMAL), [override])


def test_errors_name_the_command_line_for_what_it_set_and_the_file_for_the_rest(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"^command line \(--epochs 0\): 'trainer\.epochs'"):
        Config.load(path, epochs=0)
    with pytest.raises(ConfigError, match=r"^\S*bad\.yaml: 'trainer\.amp'"):
        Config.load(write(tmp_path, MINIMAL + "trainer: {amp: fp8}\n", "bad.yaml"), ["trainer.epochs=3"])
    config = Config.load(path, ["arch.args.depth=3", "optimizer.type=Adamm"])
    with pytest.raises(ConfigError, match=r"^command line \(arch\.args\.depth=3\): wrong args for arch type"):
        config.init_obj("arch")
    with pytest.raises(ConfigError, match=r"^command line \(optimizer\.type=Adamm\): unknown optimizer type"):
        config.init_obj("optimizer", params=[torch.zeros(1, requires_grad=True)])
    config = Config.load(path, ["optimizer.args.lr=-1"])
    with pytest.raises(ConfigError, match=r"c\.yaml with the command line's optimizer\.args\.lr=-1: optimizer type "
                                          r"'Adam' refused its arguments"):
        config.init_obj("optimizer", params=[torch.zeros(1, requires_grad=True)])


def test_a_type_torch_lacks_is_not_said_to_be_definable(tmp_path):
    config = Config.load(write(tmp_path, MINIMAL), ["optimizer.type=Adamish", "lr_scheduler={type: Cosine}"])
    params = [torch.zeros(1, requires_grad=True)]
    with pytest.raises(ConfigError, match=r"looked up in torch\.optim only; check the spelling there\.$") as e:
        config.init_obj("optimizer", params=params)
    assert "Define yours" not in str(e.value)
    with pytest.raises(ConfigError, match=r"looked up in torch\.optim\.lr_scheduler only"):
        config.init_obj("lr_scheduler", optimizer=torch.optim.SGD(params, lr=1))


def test_a_short_flag_holds_over_an_override_that_replaces_its_whole_section():
    config = Config.load(REPO / "configs" / "config.yaml", [ORDINARY_LOADER], bs=32)
    assert config["data_loader"]["type"] == "CsvImageDataLoader" and config["data_loader"]["args"]["batch_size"] == 32
    assert config.source.of("data_loader.args.batch_size") == "command line (--bs 32)"
