"""Synthetic pairs and the .pt loader."""

from __future__ import annotations

import pytest
import torch

from energy_flow.data import DataError, SyntheticPairs, load_pairs


def test_synthetic_pairs_are_seeded_normalized_and_related():
    data = SyntheticPairs(seed=4)
    x, y = data.batch(64, step=3)
    x2, y2 = SyntheticPairs(seed=4).batch(64, step=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, data.batch(64, step=4)[0])
    assert not torch.equal(x, SyntheticPairs(seed=5).batch(64, step=3)[0])
    assert x.shape == y.shape == (64, 768)
    assert torch.allclose(x.norm(dim=1), torch.ones(64), atol=1e-5)
    assert torch.allclose(y.norm(dim=1), torch.ones(64), atol=1e-5)
    cos = (x * y).sum(1)
    assert 0.6 < cos.mean() < 0.9
    shared = (x @ x.T)[~torch.eye(64, dtype=torch.bool)].mean()
    assert shared > 0.3  # a shared dominant direction
    eye = torch.eye(768)
    assert torch.allclose(data.mixing @ data.mixing.T, eye, atol=1e-4)


def _save(path, **items):
    torch.save(items, path)
    return path


def test_load_pairs_reads_good_file(tmp_path):
    x, y = torch.randn(5, 768), torch.randn(5, 768)
    got = load_pairs(_save(tmp_path / "ok.pt", input_embeddings=x, target_embeddings=y))
    assert torch.equal(got[0], x) and torch.equal(got[1], y)


@pytest.mark.parametrize("items, message", [
    (dict(input_embeddings=torch.zeros(3, 768)), "missing key\\(s\\) target_embeddings"),
    (dict(input_embeddings=torch.zeros(3, 768), target_embeddings=torch.zeros(3, 512)),
     "target_embeddings must have shape \\[N, 768\\], got \\[3, 512\\]"),
    (dict(input_embeddings=torch.zeros(3, 768), target_embeddings=torch.zeros(4, 768)),
     "input_embeddings has 3 rows but target_embeddings has 4"),
    (dict(input_embeddings=torch.full((2, 768), float("nan")),
          target_embeddings=torch.zeros(2, 768)), "input_embeddings contains NaN"),
    (dict(input_embeddings=[1, 2], target_embeddings=torch.zeros(2, 768)),
     "input_embeddings is a list, not a tensor"),
    (dict(input_embeddings=torch.zeros(2, 768, dtype=torch.long),
          target_embeddings=torch.zeros(2, 768)), "must be floating point"),
    (dict(input_embeddings=torch.zeros(0, 768), target_embeddings=torch.zeros(0, 768)),
     "input_embeddings is empty"),
])
def test_load_pairs_rejects_bad_contents(tmp_path, items, message):
    with pytest.raises(DataError, match=message):
        load_pairs(_save(tmp_path / "bad.pt", **items))


def test_load_pairs_rejects_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="not a loadable torch file"):
        load_pairs(junk)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2, 768)], listed)
    with pytest.raises(DataError, match="expected a dict"):
        load_pairs(listed)
    assert issubclass(DataError, ValueError)
