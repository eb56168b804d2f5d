"""The template's own models, losses and metrics, found after yours (model/model.py, loss.py, metric.py)."""
