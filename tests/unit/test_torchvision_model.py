"""torchvision's classifiers (model/builtin/torchvision_model.py): pretrained weights from a local file, a frozen
backbone, optimizer parameter groups, initialisation by config."""
import urllib.error

import pytest
import torch
import torchvision

from model.builtin.torchvision_model import TorchvisionClassifier
from model.factory import build_model, build_optimizer
from trainer.checkpoint import load_checkpoint
from utils.config import Config
from utils.errors import ConfigError

from fake_data import patch_cifar10_sums, write_cifar10
from helpers import REPO, only_run, train_example


def resnet18_file(tmp_path):
    """Random ResNet-18 weights with torchvision's 1000-class head, saved as the downloaded file would be."""
    torch.manual_seed(123)
    path = tmp_path / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_fine_tuning_with_a_frozen_backbone_changes_only_the_head(tmp_path, monkeypatch, capsys):
    weights = resnet18_file(tmp_path)
    patch_cifar10_sums(monkeypatch, write_cifar10(tmp_path / "data"))
    assert train_example("cifar10_resnet18.yaml", tmp_path, "data_loader.args.batch_size=32",
                         "data_loader.args.pin_memory=false", f"arch.args.weights={weights}",
                         "arch.args.freeze=backbone") == 0
    out = capsys.readouterr().out
    assert "net.fc       Linear                     5,130           0" in out
    assert "total        TorchvisionClassifier      5,130  11,176,512" in out
    original = torch.load(weights, weights_only=True)
    trained = load_checkpoint(only_run(tmp_path / "saved") / "checkpoint-latest.pth")
    backbone = [k for k in original if not k.startswith("fc.")]
    assert len(backbone) == 120  # weights and BatchNorm buffers
    for key in backbone:
        assert torch.equal(trained["model"][f"net.{key}"], original[key]), key
    assert trained["model"]["net.fc.weight"].shape == (10, 512)
    # Only the head is in the optimizer: the backbone's group of the config is empty once it is frozen.
    groups = trained["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups] == [2, 0] and len(trained["optimizer"]["state"]) == 2


def test_parameter_groups_give_the_backbone_its_own_learning_rate():
    config = Config.load(REPO / "configs" / "cifar10_resnet18.yaml", ["arch.args.weights=null"])
    model = build_model(config)
    optimizer = build_optimizer(config, model)
    head, backbone = optimizer.param_groups
    assert head["lr"] == 0.05 and backbone["lr"] == 0.005 and backbone["momentum"] == 0.9
    assert {id(p) for p in head["params"]} == {id(p) for p in model.net.fc.parameters()}
    assert len(backbone["params"]) == len(list(model.parameters())) - 2
    bad = Config.load(REPO / "configs" / "cifar10_resnet18.yaml",
                      ["arch.args.weights=null", "optimizer.param_groups=[{modules: [net.layer9], lr: 0.1}]"])
    with pytest.raises(ConfigError, match=r"param_groups\[0\].modules' names 'net.layer9'.*Did you mean 'net.layer4'"):
        build_optimizer(bad, build_model(bad))


def test_downloadable_weights_offline_say_how_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match=r"^weights: cannot download the DEFAULT weights of resnet18 .*no route to "
                                         r"host.*download https://download.pytorch.org/models/resnet18-\w+\.pth, copy "
                                         r"the file here, and set weights to its path"):
        TorchvisionClassifier("resnet18", 10, weights="DEFAULT")
    with pytest.raises(ValueError, match="^name: torchvision has no classifier 'resnet19'.*Did you mean 'resnet18'"):
        TorchvisionClassifier("resnet19")
    with pytest.raises(ValueError, match="^weights: 'IMAGENET' is neither a file nor a weights name of resnet18"):
        TorchvisionClassifier("resnet18", weights="IMAGENET")
    with pytest.raises(ValueError, match="^freeze: the model has no module 'layer5'.*Did you mean 'layer4'"):
        TorchvisionClassifier("resnet18", freeze=["layer5"])


def test_freezing_the_backbone_leaves_only_the_head_trainable_in_any_classifier():
    model = TorchvisionClassifier("mobilenet_v3_small", 7, freeze="backbone")  # the head sits in classifier.3
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["net.classifier.3.weight", "net.classifier.3.bias"]
    assert len(model.backbone_parameters()) == len(list(model.parameters())) - 2
    model.train()
    assert not model.net.classifier[0].training and model.net.classifier[3].training
    with pytest.raises(ValueError, match="takes 3-channel images and got 1-channel ones.*image_mode: rgb"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="googlenet is not supported here"):
        TorchvisionClassifier("googlenet")


def test_frozen_modules_stay_in_eval_mode():
    model = TorchvisionClassifier("resnet18", 10, freeze=["conv1", "bn1", "layer1"])
    model.train()
    assert not model.net.bn1.training and not model.net.layer1[0].bn1.training and model.net.layer2.training
    assert all(not p.requires_grad for p in model.net.layer1.parameters())
    assert all(p.requires_grad for p in model.net.layer2.parameters())


def test_init_by_config_leaves_pretrained_parts_alone(tmp_path):
    config = Config.load(REPO / "configs" / "config.yaml", ["arch.init={type: constant, args: {val: 0.5}}"])
    model = build_model(config)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            assert torch.all(module.weight == 0.5) and (module.bias is None or torch.all(module.bias == 0))
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.all(module.weight == 1)
    weights = resnet18_file(tmp_path)
    config = Config.load(REPO / "configs" / "cifar10_resnet18.yaml",
                         [f"arch.args.weights={weights}", "arch.init={type: constant_, args: {val: 0.5}}"])
    model = build_model(config)
    original = torch.load(weights, weights_only=True)
    assert torch.equal(model.net.conv1.weight, original["conv1.weight"])
    assert torch.all(model.net.fc.weight == 0.5) and torch.all(model.net.fc.bias == 0)
    # A checkpoint's weights replace all of it, so test.py and --resume skip both the file and the init.
    assert not torch.equal(build_model(config, pretrained=False).net.conv1.weight, original["conv1.weight"])
    bad = Config.load(REPO / "configs" / "config.yaml", ["arch.init={type: kaiming_normall}"])
    with pytest.raises(ConfigError, match="unknown arch.init type 'kaiming_normall_'.*kaiming_normal_"):
        build_model(bad)
