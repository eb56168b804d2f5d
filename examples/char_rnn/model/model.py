"""A character-level LSTM language model, as pytorch/examples' word_language_model's RNNModel: embedding, LSTM
layers and a linear decoder to the next character's scores. It knows its `vocabulary` (from the data loader), so a
checkpoint alone can turn its codes back into text."""
import torch
from torch import nn


class CharLSTM(nn.Module):
    def __init__(self, vocabulary: str, embedding: int = 32, hidden: int = 128, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.vocabulary = vocabulary
        self.embed = nn.Embedding(len(vocabulary), embedding)
        self.lstm = nn.LSTM(embedding, hidden, layers, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, len(vocabulary))

    def forward(self, codes: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        """Scores of the next character (N, T, vocabulary) for `codes` (N, T), and the LSTM state after them."""
        output, state = self.lstm(self.drop(self.embed(codes)), state)
        return self.decoder(self.drop(output)), state

    @torch.no_grad()
    def generate(self, prompt: str, length: int, generator: torch.Generator, temperature: float = 0.8) -> str:
        """`prompt` continued by `length` characters drawn from the model."""
        device = self.decoder.weight.device
        codes = torch.tensor([[self.vocabulary.index(c) for c in prompt if c in self.vocabulary]], device=device)
        scores, state = self(codes)
        text = prompt
        for _ in range(length):
            probabilities = (scores[0, -1] / temperature).softmax(0).cpu()
            code = int(torch.multinomial(probabilities, 1, generator=generator))
            text += self.vocabulary[code]
            scores, state = self(torch.tensor([[code]], device=device), state)
        return text
