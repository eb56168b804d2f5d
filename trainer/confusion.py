"""The figures of a classifier's evaluation: the confusion matrix, per-class precision, recall and F1 with their
averages, and the most confidently wrong samples.

Everything is gathered during `Trainer.evaluate`'s one pass over the data: `evaluate(loader, observe=collector)`
hands each step's batch and `Step` (output, target) to a `ConfusionCollector`, which adds exact integer counts
on the device (no host synchronisation per batch) and keeps the top-k mistakes. `result()` adds the counts of
all processes under DDP, so every figure is computed from the split's exact totals. test.py writes them as a
report (tools/report.py); with TensorBoard, training writes the last validation pass's matrix and per-class figures
(trainer/progress.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from utils import distributed
from utils.plots import scale_to_unit


@dataclass
class Mistake:
    index: int  # the sample's position in the evaluated split, in the order the loader gives it (from 0)
    true: int
    predicted: int
    confidence: float  # softmax probability of the predicted class
    image: torch.Tensor | None = None  # (C, H, W), scaled to 0..1, on the CPU; None for inputs that are not images
    sample: str | None = None  # what the sample is (its file: "image 'data/pets/cat/001.jpg'"), when known


@dataclass
class ClassReport:
    names: list[str]
    matrix: list[list[int]]  # matrix[true][predicted] = number of samples
    ignored: int = 0  # samples whose target was outside 0..C-1 (e.g. cross_entropy's ignore_index), not counted
    mistakes: list[Mistake] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return classification_figures(self.matrix, self.names)


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def classification_figures(matrix: list[list[int]], names: list[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class from the integer counts, their macro (plain mean over all
    classes) and weighted (by support) averages, and accuracy. A class never predicted has precision 0, one
    without samples recall 0, and F1 is 0 when both are (scikit-learn's `zero_division=0`)."""
    n = len(matrix)
    support = [sum(row) for row in matrix]
    predicted = [sum(row[j] for row in matrix) for j in range(n)]
    total = sum(support)
    per_class = {}
    for i, name in enumerate(names):
        precision, recall = _ratio(matrix[i][i], predicted[i]), _ratio(matrix[i][i], support[i])
        per_class[name] = {"precision": precision, "recall": recall,
                           "f1": _ratio(2 * precision * recall, precision + recall), "support": support[i]}
    keys = ("precision", "recall", "f1")
    return {
        "per_class": per_class,
        "macro_avg": {**{k: sum(c[k] for c in per_class.values()) / n for k in keys}, "support": total},
        "weighted_avg": {**{k: _ratio(sum(c[k] * c["support"] for c in per_class.values()), total) for k in keys},
                         "support": total},
        "accuracy": _ratio(sum(matrix[i][i] for i in range(n)), total),
        "samples": total,
    }


class ConfusionCollector:
    """Called with each evaluation step's batch and `Step`; keeps the confusion counts, and with `mistakes`
    the most confident wrong predictions (with the inputs when they are images).

    Classification means outputs of shape (N, C) with C >= 2 and targets that are class indices (N,) or class
    probabilities shaped like the outputs (one-hot, soft labels). Anything else (regression, segmentation)
    sets `skipped` to the reason and is ignored: the report is left out, not an error.
    """

    def __init__(self, device: torch.device, mistakes: int = 0):
        self.device = device
        self.keep = mistakes
        self.num_classes = 0
        self.skipped = ""
        # [true * C + predicted] counts, then the ignored targets, then the probability targets that are not.
        self.counts: torch.Tensor | None = None
        self.seen = 0
        self.top: dict[str, torch.Tensor] = {}

    def __call__(self, batch: Any, step: Any) -> None:
        labels = None if self.skipped else self._labels(step.output, step.target)
        if labels is None:
            return
        output, n = step.output, self.num_classes
        predicted = output.argmax(dim=1)
        valid = (labels >= 0) & (labels < n)
        self.counts.scatter_add_(0, torch.where(valid, labels * n + predicted, n * n), torch.ones_like(labels))
        if self.keep:
            self._keep_mistakes(batch, output, labels, predicted, valid)
        self.seen += len(labels)

    def _labels(self, output: Any, target: Any) -> torch.Tensor | None:
        """The batch's class indices, or None (and `skipped` says why) when it is not classification."""
        shape = f"a batch of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else \
            f"a {type(output).__name__}" + (f" of {len(output)}" if isinstance(output, (tuple, list)) else "")
        target_shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        labels = None
        if isinstance(output, torch.Tensor) and output.dim() in (1, 2) and output[0].numel() == 1:
            self.skipped = ("the model gives one value per sample (a regression, or a binary model with one logit), "
                            "not a score per class")
        elif not (isinstance(output, torch.Tensor) and output.is_floating_point() and output.dim() == 2
                  and output.size(1) >= 2):
            self.skipped = f"the model's outputs ({shape}) are not class scores of shape (samples, classes)"
        elif not isinstance(target, torch.Tensor) or target.dim() == 0 or len(target) != len(output):
            self.skipped = f"the targets (shape {target_shape}) are not one per sample"
        elif target.dim() == 1 and not target.is_floating_point():
            labels = target.long()
        elif target.shape == output.shape and target.is_floating_point():
            labels = target.argmax(dim=1)
        else:
            self.skipped = (f"the targets (shape {target_shape}) are neither class indices of shape (samples,) "
                            "nor class probabilities shaped like the outputs")
        if labels is not None and self.num_classes and output.size(1) != self.num_classes:
            labels, self.skipped = None, "the number of classes changed between batches"
        if labels is None:
            self.counts, self.top = None, {}
            return None
        if self.counts is None:
            self.num_classes = output.size(1)
            self.counts = torch.zeros(self.num_classes ** 2 + 2, dtype=torch.long, device=labels.device)
        if target.is_floating_point():  # rows that are not probabilities: multi-output regression, not classes
            self.counts[-1] += ((target < 0).any(dim=1) | ((target.sum(dim=1) - 1).abs() > 1e-3)).sum()
        return labels

    def _keep_mistakes(self, batch: Any, output: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
                       valid: torch.Tensor) -> None:
        """Merge this batch's wrong predictions into the top `keep` by confidence (without a host sync)."""
        confidence = torch.softmax(output.float(), dim=1).gather(1, predicted[:, None]).squeeze(1)
        score = torch.where(valid & (predicted != labels), confidence, -1.0)
        new = {"score": score, "true": labels, "predicted": predicted,
               "index": torch.arange(self.seen, self.seen + len(labels), device=labels.device)}
        inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else None
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 4 and inputs.shape[1] in (1, 3) \
                and len(inputs) == len(labels) and (not self.top or "image" in self.top):
            new["image"] = inputs.detach()
        merged = {k: torch.cat([self.top[k], v]) if self.top else v for k, v in new.items()
                  if not self.top or k in self.top}
        best = merged["score"].topk(min(self.keep, len(merged["score"]))).indices
        self.top = {k: v[best] for k, v in merged.items()}

    def result(self, names: list[str] | None = None) -> ClassReport | None:
        """The report over every sample seen, by all processes under DDP (a collective call there); None, with
        `skipped` set, when the outputs were not a classifier's. `names` label the classes ("0".."C-1" when
        missing or of another length). Mistakes are this process's (test.py runs in one)."""
        status = distributed.gather((self.skipped, self.num_classes))
        self.skipped = next((why for why, _ in status if why), "")
        sizes = {n for _, n in status if n}
        if not self.skipped and len(sizes) != 1:
            self.skipped = "no samples were evaluated" if not sizes else "the processes saw different classes"
        if self.skipped:
            return None
        n = sizes.pop()
        counts = self.counts if self.counts is not None else torch.zeros(n * n + 2, dtype=torch.long,
                                                                         device=self.device)
        counts = distributed.all_reduce(counts.clone()).tolist()
        if counts[-1]:
            self.skipped = (f"{counts[-1]} float target row(s) are not class probabilities (negative, or not "
                            "summing to 1): the targets look like a regression's")
            return None
        names = names if names is not None and len(names) == n else [str(i) for i in range(n)]
        mistakes = []
        if self.top:
            images = scale_to_unit(self.top["image"]).cpu() if "image" in self.top else None
            rows = zip(*(self.top[k].tolist() for k in ("score", "index", "true", "predicted")))
            mistakes = [Mistake(index, true, predicted, score, None if images is None else images[k])
                        for k, (score, index, true, predicted) in enumerate(rows) if score >= 0]
        return ClassReport(names, [counts[i * n:(i + 1) * n] for i in range(n)], counts[n * n], mistakes)
