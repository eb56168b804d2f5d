"""The config schema (utils/schema.py): declared once, it fills in defaults, checks every key with one kind of
message, and is what docs/config.md's reference and `--help-config` show."""
import re

import pytest

import train
import utils.config
from utils.config import Config
from utils.config_file import parse_value
from utils.errors import ConfigError
from utils.schema import REQUIRED, SCHEMA, Key, markdown_table

from helpers import REPO

MINIMAL = {"arch": "DigitsCNN", "data_loader": "CsvImageDataLoader", "optimizer": "Adam", "loss": "nll_loss"}
BY_PATH = {key.path: key for key in SCHEMA}


def in_project(key: Key) -> bool:
    """Whether the files of the key's feature are in this project (new_project.py --minimal leaves some out)."""
    parts = key.path.split(".")
    sections = (BY_PATH.get(".".join(parts[:n])) for n in range(1, len(parts) + 1))
    return all(s is None or s.needs is None or (REPO / s.needs).exists() for s in sections)


# With every optional section on, so that each key is there.
EVERY_KEY = {**MINIMAL, "lr_scheduler": {"type": "StepLR", "args": {"step_size": 1}, "warmup": {"epochs": 1}},
             "trainer": {"ema": in_project(BY_PATH["trainer.ema"])}}


def test_the_config_reference_in_the_docs_is_the_schema():
    docs = (REPO / "docs" / "config.md").read_text()
    generated = docs.split("tests/unit/test_schema.py checks it -->\n", 1)[1].split("<!-- end of the generated table", 1)[0]
    assert generated == markdown_table(), "run: python -m utils.schema, and paste its table into docs/config.md"


def test_every_default_passes_its_own_check(tmp_path):
    config = Config.load(None, base=EVERY_KEY).data
    for key in filter(in_project, SCHEMA):
        value = config
        for part in key.path.split("."):
            value = value[part]
        if key.default is not REQUIRED and key.kind == "value" and key.rule is not None:
            assert key.rule.test(key.default) and (value == key.default or key.path.endswith("warmup.epochs")), key.path


@pytest.mark.parametrize("key", [key for key in SCHEMA if key.kind == "value" and key.rule is not None
                                 and in_project(key)],
                         ids=lambda key: key.path)
def test_a_bad_value_names_its_key_what_it_must_be_and_who_set_it(key):
    text = "{not: good}" if key.rule.test([]) else "[not, good]"  # a mapping where a list is fine, else a list
    with pytest.raises(ConfigError) as error:
        Config.load(None, [f"{key.path}={text}"], base=EVERY_KEY)
    value = parse_value(text)
    assert str(error.value) == f"command line ({key.path}={text}): '{key.path}' must be {key.rule.what}; got {value!r}."


def test_a_feature_left_out_of_the_project_is_named_with_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(utils.config, "REPO", tmp_path)  # a project without trainer/ema.py
    assert Config.load(None, ["trainer.ema=false"], base=MINIMAL)["trainer"]["ema"] is None  # off: no file needed
    with pytest.raises(ConfigError, match=r"^command line \(trainer.ema=true\): 'trainer.ema' needs trainer/ema.py, "
                                          r"which this project was made without \(new_project.py --minimal\)\. Copy "
                                          "that file from the template, or leave the key out.$"):
        Config.load(None, ["trainer.ema=true"], base=MINIMAL)


def test_help_config_prints_a_section_and_names_an_unknown_one(capsys):
    assert train.main(["--help-config", "trainer.ema"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^(\S+): (\S+)$", out, re.M) == [("trainer.ema", "null"), ("trainer.ema.decay", "0.99998"),
                                                        ("trainer.ema.every_steps", "32"), ("trainer.ema.warmup", "0")]
    assert train.main(["--help-config", "traner"]) == 2
    assert "no config section 'traner'. Did you mean 'trainer'" in capsys.readouterr().err
