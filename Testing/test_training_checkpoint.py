"""Checkpoints without pickle: resume continues exactly (weights, optimiser state, step, RNGs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.training.checkpoint import load_checkpoint, save_checkpoint


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    nets = {"g": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), "d": nn.Linear(2, 1)}
    opts = {"g": torch.optim.Adam(nets["g"].parameters(), lr=1e-2),
            "d": torch.optim.SGD(nets["d"].parameters(), lr=1e-2, momentum=0.9)}
    return nets, opts


def _steps(nets, opts, rng, n):
    for _ in range(n):
        x = torch.randn(8, 4) + float(rng.normal())  # uses both torch and numpy RNG
        for name, inp in (("g", x), ("d", x[:, :2])):
            opts[name].zero_grad()
            loss = nets[name](inp).pow(2).mean()
            loss.backward()
            opts[name].step()


def test_resume_matches_uninterrupted_run(tmp_path):
    nets_a, opts_a = _setup()
    rng_a = np.random.default_rng(1)
    _steps(nets_a, opts_a, rng_a, 6)

    nets_b, opts_b = _setup()
    rng_b = np.random.default_rng(1)
    _steps(nets_b, opts_b, rng_b, 3)
    save_checkpoint(tmp_path / "ckpt", nets_b, opts_b, {"step": 3, "best": {"mae": 1.5}}, [rng_b])
    save_checkpoint(tmp_path / "ckpt", nets_b, opts_b, {"step": 3, "best": {"mae": 1.5}}, [rng_b])  # overwrite
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["optimizer.safetensors", "state.json", "weights.safetensors"]
    assert not any(p.suffix in (".pt", ".pkl") for p in tmp_path.rglob("*"))

    torch.manual_seed(123)  # scramble RNGs: the checkpoint must restore them
    nets_c, opts_c = _setup(seed=99)
    rng_c = np.random.default_rng(42)
    state = load_checkpoint(tmp_path / "ckpt", nets_c, opts_c, [rng_c])
    assert state == {"step": 3, "best": {"mae": 1.5}}
    exp_avg_b = opts_b["g"].state_dict()["state"][0]["exp_avg"]
    assert torch.equal(opts_c["g"].state_dict()["state"][0]["exp_avg"], exp_avg_b)
    assert opts_c["g"].state_dict()["state"][0]["step"] == opts_b["g"].state_dict()["state"][0]["step"]
    _steps(nets_c, opts_c, rng_c, 3)
    for name in nets_a:
        for pa, pc in zip(nets_a[name].parameters(), nets_c[name].parameters()):
            assert torch.allclose(pa, pc, atol=1e-7)
    meta = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert meta["optimizers"]["d"]["param_groups"][0]["momentum"] == 0.9


def test_missing_or_mismatched_checkpoint(tmp_path):
    nets, opts = _setup()
    with pytest.raises(ConfigError, match="No checkpoint"):
        load_checkpoint(tmp_path / "none", nets, opts)
    save_checkpoint(tmp_path / "ck", nets, opts, {"step": 1})
    other = {"g": nn.Linear(3, 1), "d": nn.Linear(2, 1)}
    with pytest.raises(ConfigError, match="does not fit"):
        load_checkpoint(tmp_path / "ck", other, {})


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_a_loaded_checkpoint_keeps_no_file_mapped(tmp_path):
    """Windows cannot replace a folder holding a mapped file: the next checkpoint of a resumed run would fail."""
    nets, opts = _setup()
    _steps(nets, opts, np.random.default_rng(1), 2)
    save_checkpoint(tmp_path / "ckpt", nets, opts, {"step": 2, "best": {}})
    nets_c, opts_c = _setup(seed=5)
    load_checkpoint(tmp_path / "ckpt", nets_c, opts_c)
    _steps(nets_c, opts_c, np.random.default_rng(2), 1)
    assert str(tmp_path / "ckpt") not in Path("/proc/self/maps").read_text()
    save_checkpoint(tmp_path / "ckpt", nets_c, opts_c, {"step": 3, "best": {}})


@pytest.mark.parametrize("damage", ["truncated state", "no optimizer file", "truncated weights", "no optimizers"])
def test_a_damaged_checkpoint_is_one_clear_error(tmp_path, damage):
    nets, opts = _setup()
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, nets, opts, {"step": 1, "best": {}})
    state, weights = folder / "state.json", folder / "weights.safetensors"
    if damage == "truncated state":
        state.write_text(state.read_text(encoding="utf-8")[:40], encoding="utf-8")
    elif damage == "no optimizer file":
        (folder / "optimizer.safetensors").unlink()
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:20])
    else:
        payload = json.loads(state.read_text(encoding="utf-8"))
        del payload["optimizers"]
        state.write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ConfigError, match="is incomplete or damaged") as caught:
        load_checkpoint(folder, *_setup())
    assert "without --resume" in caught.value.fix


def test_the_gpu_generators_are_saved_and_restored(tmp_path, monkeypatch):
    """On a GPU the training noise comes from the CUDA generators: a resume that restored only the CPU generator
    replayed the noise of the run's first steps (CUDA itself is faked here; test_cuda.py runs it for real)."""
    states = {0: torch.arange(16, dtype=torch.uint8), 1: torch.arange(16, 32, dtype=torch.uint8)}
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda index: states[index].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.__setitem__(index, state))
    nets, opts = _setup()
    save_checkpoint(tmp_path / "ckpt", nets, opts, {"step": 1, "best": {}})
    load_checkpoint(tmp_path / "ckpt", *_setup())
    assert sorted(restored) == [0, 1] and all(torch.equal(restored[i], states[i]) for i in states)

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # resumed on a machine with fewer GPUs
    restored.clear()
    load_checkpoint(tmp_path / "ckpt", *_setup())
    assert list(restored) == [0]


def test_each_rank_draws_its_own_noise_and_a_single_process_keeps_its_stream():
    from MedTranslateLib.training.distributed import DistContext, seed_rank

    draws = []
    for rank in (0, 1):
        torch.manual_seed(0)  # every rank starts alike (the networks' initial weights must agree)
        seed_rank(DistContext(rank=rank, world_size=2), seed=0, step=0)
        draws.append(torch.randn(4))
    assert not torch.equal(*draws)
    seed_rank(DistContext(rank=0, world_size=2), seed=0, step=5)  # resumed at step 5: not the first steps' noise
    assert not torch.equal(torch.randn(4), draws[0])
    torch.manual_seed(0)
    expected = torch.randn(4)
    torch.manual_seed(0)
    seed_rank(DistContext(), seed=0, step=0)
    assert torch.equal(torch.randn(4), expected)
