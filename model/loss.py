"""Your losses: functions `(output, target) -> scalar tensor`, or `nn.Module` classes, named in the config's
`loss`. The template's own (`cross_entropy`, `nll_loss`, ...) are in `model/builtin/losses.py`, and `torch.nn`'s
classes (`CrossEntropyLoss`, ...) are found too; a name here replaces the template's, and the log says so.
"""
