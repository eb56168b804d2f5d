"""pytorch/examples' time_sequence_prediction model: two stacked LSTM cells and a linear read-out that predict each
next value of a wave; given `future` steps, it goes on from its own predictions."""
import torch
from torch import nn


class SineLSTM(nn.Module):
    def __init__(self, hidden: int = 51):
        super().__init__()
        self.hidden = hidden
        self.cell1, self.cell2 = nn.LSTMCell(1, hidden), nn.LSTMCell(hidden, hidden)
        self.read_out = nn.Linear(hidden, 1)

    def forward(self, waves: torch.Tensor, future: int = 0) -> torch.Tensor:
        """`waves` (N, T) to the predicted next values (N, T + future)."""
        states = [waves.new_zeros(len(waves), self.hidden) for _ in range(4)]
        outputs, value = [], None
        for step in range(waves.size(1) + future):
            value = waves[:, step:step + 1] if step < waves.size(1) else value
            states[0], states[1] = self.cell1(value, (states[0], states[1]))
            states[2], states[3] = self.cell2(states[0], (states[2], states[3]))
            value = self.read_out(states[2])
            outputs.append(value)
        return torch.cat(outputs, dim=1)
