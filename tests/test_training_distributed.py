import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from brainage.training.distributed import free_port, rank_and_world


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        from brainage.estimators.regressor import PIDRegressor
        from brainage.simulate.tabular import make_pid_dataset

        assert rank_and_world() == (rank, world)
        d = make_pid_dataset("unique", 256, n_features=6, seed=0)
        reg = PIDRegressor(latent_dim=3, hidden=(8,), max_epochs=3, batch_size=32,
                           device="cpu", random_state=0).fit(d.X, d.y)
        pred = reg.predict(d.X)
        np.save(f"{out_dir}/pred{rank}.npy", pred)
        with open(f"{out_dir}/info{rank}.json", "w") as f:
            json.dump({"loss": reg.history_[-1]["train_loss"],
                       "weights": reg.fusion_weights_}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    p0, p1 = np.load(tmp_path / "pred0.npy"), np.load(tmp_path / "pred1.npy")
    assert p0.shape == p1.shape == (256,)
    assert np.all(np.isfinite(p0))
    # gradients are averaged and buffers synchronised: both ranks hold the same model
    np.testing.assert_allclose(p0, p1, rtol=1e-5, atol=1e-6)
    i0 = json.loads((tmp_path / "info0.json").read_text())
    i1 = json.loads((tmp_path / "info1.json").read_text())
    assert np.isfinite(i0["loss"]) and i0["loss"] == i1["loss"]
    assert i0["weights"] == i1["weights"]


def _window_worker(rank, world, port, out_dir, win_len):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        from brainage.models.presets import get_preset
        from brainage.training.distributed import all_gather_rows
        from brainage.training.epoch_atoms import _EpochAtoms

        y, za, zb = _window_data()
        # rank r holds every world-th sample (the trainer's sharding), in batches of 8
        mine = np.arange(rank, len(y), world)
        collector = _EpochAtoms(["a", "b"], [("a", "b")], get_preset("default"), win_len)
        for start in range(0, len(mine), 8):
            b = mine[start:start + 8]
            collector.add({"a": torch.from_numpy(za[b]), "b": torch.from_numpy(zb[b])},
                          torch.from_numpy(y[b]))
        atoms = collector.atoms()
        uneven = all_gather_rows(torch.arange(rank + 2, dtype=torch.float32).reshape(-1, 1))
        with open(f"{out_dir}/window{rank}.json", "w") as f:
            json.dump({"atoms": atoms, "uneven": uneven.ravel().tolist(),
                       "mine": mine.tolist()}, f)
    finally:
        dist.destroy_process_group()


def _window_data():
    rng = np.random.default_rng(3)
    n = 96
    za = rng.normal(size=(n, 2)).astype(np.float32)
    zb = rng.normal(size=(n, 2)).astype(np.float32)
    y = (za[:, 0] + 0.5 * zb[:, 0] + 0.3 * za[:, 1] * zb[:, 1]
         + 0.5 * rng.normal(size=n)).astype(np.float32)
    return y, za, zb


@pytest.mark.slow
@pytest.mark.parametrize("win_len", [96, 64])
def test_ddp_gathered_window_atoms_equal_a_single_process(tmp_path, win_len):
    from brainage.training.epoch_atoms import _pid_atoms

    mp.spawn(_window_worker, args=(2, free_port(), str(tmp_path), win_len), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "window0.json").read_text())
    r1 = json.loads((tmp_path / "window1.json").read_text())
    # rows of different lengths are gathered in rank order
    assert r0["uneven"] == r1["uneven"] == [0.0, 1.0, 0.0, 1.0, 2.0]
    assert r0["atoms"] == r1["atoms"]  # every rank takes the same decisions
    # a single process holding the same window: each rank's latest win_len / 2 samples
    y, za, zb = _window_data()
    keep = win_len // 2
    window = np.concatenate([r0["mine"][-keep:], r1["mine"][-keep:]])
    single = _pid_atoms(torch.from_numpy(y[window]),
                        {"a": torch.from_numpy(za[window]), "b": torch.from_numpy(zb[window])},
                        [("a", "b")], bias_correction=True)
    for atom in ("U1", "U2", "R", "S"):
        assert r0["atoms"]["a|b"][atom] == pytest.approx(single["a|b"][atom], abs=1e-9)
    if win_len == 96:  # the whole epoch: the atoms of all the data, whatever the sharding
        full = _pid_atoms(torch.from_numpy(y), {"a": torch.from_numpy(za), "b": torch.from_numpy(zb)},
                          [("a", "b")], bias_correction=True)
        assert r0["atoms"]["a|b"]["S"] == pytest.approx(full["a|b"]["S"], abs=1e-9)
    # the atoms of one rank's shard alone differ: the gathering is what makes them global
    half = _pid_atoms(torch.from_numpy(y[r0["mine"][-keep:]]),
                      {"a": torch.from_numpy(za[r0["mine"][-keep:]]),
                       "b": torch.from_numpy(zb[r0["mine"][-keep:]])}, [("a", "b")], bias_correction=True)
    assert abs(half["a|b"]["U1"] - r0["atoms"]["a|b"]["U1"]) > 1e-3
