"""Data: a seeded synthetic pair generator and the `.pt` pair loader."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F


class DataError(ValueError):
    """A data file is missing or malformed; the message names the problem."""


class SyntheticPairs:
    """(input, target) pairs of L2-normalized vectors, deterministic per (seed, step).

    Inputs share a dominant direction plus noise, like mean-pooled sentence
    embeddings; targets are normalize(A x + noise) for a fixed random
    orthogonal A near the identity (the Q of I + 0.7 G, G Gaussian), so
    cos(x, y) is about 0.8 and the map from input to target is learnable.
    """

    def __init__(self, embedding_dim: int = 768, seed: int = 0,
                 direction_weight: float = 1.0, noise: float = 0.1):
        if embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.seed = seed
        self.noise = noise
        gen = torch.Generator().manual_seed(seed)
        self.direction = F.normalize(torch.randn(embedding_dim, generator=gen), dim=0)
        self.direction_weight = direction_weight
        perturbed = torch.eye(embedding_dim) + 0.7 * torch.randn(
            embedding_dim, embedding_dim, generator=gen) / embedding_dim ** 0.5
        q, r = torch.linalg.qr(perturbed)
        self.mixing = q * torch.sign(torch.diagonal(r))  # [D, D] orthogonal, near I

    def batch(self, batch_size: int, step: int, device=None) -> tuple[Tensor, Tensor]:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 1)
        d = self.embedding_dim
        spread = torch.randn(batch_size, d, generator=gen) / d ** 0.5
        inputs = F.normalize(self.direction_weight * self.direction + spread, dim=1)
        noise = self.noise * torch.randn(batch_size, d, generator=gen) / d ** 0.5
        targets = F.normalize(inputs @ self.mixing.T + noise, dim=1)
        return inputs.to(device), targets.to(device)


def load_pairs(path: str | Path, embedding_dim: int = 768) -> tuple[Tensor, Tensor]:
    """Read ``input_embeddings`` and ``target_embeddings`` [N, embedding_dim] from a `.pt` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise DataError(f"{path}: not a loadable torch file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict with input_embeddings and target_embeddings, "
                        f"got {type(data).__name__}")
    missing = [k for k in ("input_embeddings", "target_embeddings") if k not in data]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; found "
                        f"{', '.join(map(str, data)) or 'none'}")
    out = []
    for key in ("input_embeddings", "target_embeddings"):
        value = data[key]
        if not isinstance(value, Tensor):
            raise DataError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
        if value.dim() != 2 or value.shape[1] != embedding_dim:
            raise DataError(f"{path}: {key} must have shape [N, {embedding_dim}], "
                            f"got {list(value.shape)}")
        if not value.is_floating_point():
            raise DataError(f"{path}: {key} must be floating point, got {value.dtype}")
        if value.shape[0] == 0:
            raise DataError(f"{path}: {key} is empty")
        if not torch.isfinite(value).all():
            raise DataError(f"{path}: {key} contains NaN or infinite values")
        out.append(value.float())
    if out[0].shape[0] != out[1].shape[0]:
        raise DataError(f"{path}: input_embeddings has {out[0].shape[0]} rows but "
                        f"target_embeddings has {out[1].shape[0]}")
    return out[0], out[1]
