"""Your metrics: functions `(output, target) -> batch mean`, named in the config's `metrics`. The value may be
a 0-d tensor (on any device; best, as it needs no host sync), a Python number or a NumPy scalar. The template's
own (`accuracy`, `top_k_acc`, ...) are in `model/builtin/metrics.py`; a name here replaces the template's, and
the log says so.
"""
