"""A small CNN image classifier, profiled two ways (README: "Profile your own model").

    python -m profiler profile --workload examples/cnn.py:make_workload --steps 20
    python examples/cnn.py runs/cnn      # profiler.profile around a plain training loop
"""

from __future__ import annotations

import sys

import torch
from torch import nn

CLASSES, BATCH, SIZE = 10, 16, 32


def make_model() -> nn.Sequential:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                             nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64),  # [B, 64, 4, 4]
                         nn.Flatten(), nn.Linear(64 * 4 * 4, CLASSES))


def batch(step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return images.to(device), labels.to(device)


class CnnWorkload:
    """The Workload protocol: ``step`` plus the optional ``module``."""

    def __init__(self, device: torch.device) -> None:
        torch.manual_seed(0)
        self.module = make_model().to(device)
        self.device = device
        self.opt = torch.optim.SGD(self.module.parameters(), lr=0.05, momentum=0.9)

    def step(self, index, on_phase):
        x, y = batch(index, self.device)
        with torch.profiler.record_function("loss"):  # a scope of your own: a category
            loss = nn.functional.cross_entropy(self.module(x), y)
        on_phase and on_phase("forward")
        loss.backward()
        on_phase and on_phase("backward")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        on_phase and on_phase("optimizer")
        return {"loss": loss.detach(), "samples": BATCH}


def make_workload(device: torch.device) -> CnnWorkload:
    return CnnWorkload(device)


def main(run_dir: str, steps: int = 12) -> None:
    import profiler

    w = CnnWorkload(torch.device("cpu"))
    with profiler.profile(run_dir, model=w.module, optimizer=w.opt, module_depth=2) as prof:
        for i in range(steps):
            x, y = batch(i, w.device)
            with prof.phase("forward"):
                loss = nn.functional.cross_entropy(w.module(x), y)
            with prof.phase("backward"):
                loss.backward()
            with prof.phase("optimizer"):
                w.opt.step()
                w.opt.zero_grad(set_to_none=True)
            prof.step(loss=loss, samples=BATCH, lr=w.opt.param_groups[0]["lr"])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12)
