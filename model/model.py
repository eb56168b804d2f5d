"""Your models. Any `nn.Module` class defined here (or in another module of `model/` and imported here) can be
named in the config's `arch.type`; `arch.args` are its constructor arguments. No `__all__` is needed.

The template's own models are in `model/builtin/` (DigitsCNN, MnistModel, TorchvisionClassifier, ...). They are
found after yours: a class here with the same name replaces the template's, and the log says so.
"""
