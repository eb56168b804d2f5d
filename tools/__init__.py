"""The tools around a trained run, used by the entry points: a checkpoint back into a model (restore.py), test.py's
report files (report.py), the LR range test (lr_find.py) and hyperparameter search (search.py). They build on
trainer/, data_loader/, model/ and utils/; nothing below imports them."""
