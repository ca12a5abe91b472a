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
