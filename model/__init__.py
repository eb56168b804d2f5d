"""Models, losses and metrics: yours in model.py, loss.py and metric.py; the template's in builtin/."""
