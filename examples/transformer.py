"""A small transformer language model, profiled two ways (README: "Profile your own model").

    python -m profiler profile --workload examples/transformer.py:make_workload --steps 20
    python examples/transformer.py runs/transformer      # profiler.profile around a plain loop
"""

from __future__ import annotations

import sys

import torch
from torch import nn

VOCAB, WIDTH, LAYERS, HEADS, SEQ, BATCH = 512, 64, 2, 4, 32, 8


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 4 * WIDTH, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))  # [B, S, VOCAB]


def batch(step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g).to(device)
    return tokens[:, :-1], tokens[:, 1:]  # inputs, next-token targets


class TransformerWorkload:
    """The Workload protocol: ``step`` plus the optional ``module``."""
    def __init__(self, device: torch.device) -> None:
        torch.manual_seed(0)
        self.module = TinyLM().to(device)
        self.device = device
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=1e-3)

    def step(self, index, on_phase):
        x, y = batch(index, self.device)
        loss = nn.functional.cross_entropy(self.module(x).flatten(0, 1), y.flatten())
        on_phase and on_phase("forward")
        loss.backward()
        on_phase and on_phase("backward")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        on_phase and on_phase("optimizer")
        return {"loss": loss.detach(), "samples": BATCH, "tokens": BATCH * SEQ}


def make_workload(device: torch.device) -> TransformerWorkload:
    return TransformerWorkload(device)


def profiled_step(prof, w: TransformerWorkload, x: torch.Tensor, y: torch.Tensor) -> None:
    with prof.phase("forward"):
        loss = nn.functional.cross_entropy(w.module(x).flatten(0, 1), y.flatten())
    with prof.phase("backward"):
        loss.backward()
    with prof.phase("optimizer"):
        w.opt.step()
        w.opt.zero_grad(set_to_none=True)
    prof.step(loss=loss, samples=BATCH, tokens=BATCH * SEQ)


def main(run_dir: str, steps: int = 12, mode: str = "full") -> None:
    import profiler
    w = TransformerWorkload(torch.device("cpu"))
    with profiler.profile(run_dir, mode=mode, model=w.module, optimizer=w.opt) as prof:
        for i in range(steps):
            profiled_step(prof, w, *batch(i, w.device))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12)
