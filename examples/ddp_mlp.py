"""Your own DistributedDataParallel loop under torchrun, profiled as one run
(README: "Several ranks: torchrun").

    torchrun --standalone --nproc-per-node 2 examples/ddp_mlp.py runs/ddp-mlp [steps]

Every rank runs this script with the same run directory: rank 0 writes the run's own
files and run.jsonc (with every rank's status), rank r its files under ranks/rank<r>/,
each rank its trace rank<r>.<ts>.pt.trace.json.gz.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

import profiler

BATCH, WIDTH = 32, 128


def main(run_dir: str, steps: int = 12) -> str:
    dist.init_process_group("gloo")  # NCCL on GPUs; RANK / WORLD_SIZE come from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(
        nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, 4 * WIDTH), nn.GELU(),
        nn.Linear(4 * WIDTH, 1)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with profiler.profile(run_dir, mode="full", model=model, optimizer=opt, warmup=2) as prof:
        for step in range(steps):
            g = torch.Generator().manual_seed(step * world + rank)  # this rank's shard
            x = torch.randn(BATCH, WIDTH, generator=g)
            y = x.sum(dim=1, keepdim=True)
            with prof.phase("forward"):
                loss = nn.functional.mse_loss(model(x), y)
            with prof.phase("backward"):
                loss.backward()  # DDP's all-reduce runs here (timed: steps.csv comm_ms)
            with prof.phase("optimizer"):
                opt.step()
                opt.zero_grad()
            prof.step(loss=loss, samples=BATCH)
    dist.destroy_process_group()
    return str(prof.status)


if __name__ == "__main__":
    print(main(sys.argv[1], *(int(a) for a in sys.argv[2:3])))
