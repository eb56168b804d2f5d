"""Perplexity, exact over the epoch: exp of the mean cross-entropy per character, from summed parts (a
SummedMetric, docs/models.md), not a mean of per-batch perplexities."""
import torch
import torch.nn.functional as F

from model.builtin.metrics import SummedMetric


class Perplexity(SummedMetric):
    def sums(self, output, target):
        """[summed cross-entropy, number of characters] of a batch."""
        with torch.no_grad():
            return torch.stack([F.cross_entropy(output, target, reduction="sum"), output.new_tensor(len(target))])

    def finish(self, totals):
        return (totals[0] / totals[1]).exp()


perplexity = Perplexity()
