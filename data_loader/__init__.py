"""Data: yours in data_loaders.py; the template's loaders in builtin.py and device_loader.py, and what they are
built from (datasets, transforms, per-sample checks, the resumable sampler)."""
