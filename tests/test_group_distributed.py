"""`group --train --gpus N`: the group level as data-parallel torchrun ranks.

On this CPU machine the ranks are two gloo processes started by the command
that ``--gpus`` builds (the same code path as N GPUs, without NCCL).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from brainage.cli import main, torchrun_command

from .test_group_level import write_cohort

CONFIG = """\
name: ddptest
group:
  inputs:
    anat: {kind: regional, atlas: HarvardOxford}
    func: {kind: connectivity, atlas: HarvardOxford}
  models: [ridge, pidreg]
  primary_model: pidreg
  model_params:
    pidreg: {max_epochs: 12, latent_dim: 4, hidden: [16], batch_size: 16}
  cv: {n_splits: 3, inner_splits: 2, seed: 0}
  regions_pid: false
  attributions: false
"""


def test_torchrun_command_runs_the_same_arguments_without_gpus():
    cmd = torchrun_command(["B", "O", "group", "--train", "--gpus", "4", "--no-report"], 4)
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert cmd[5:] == ["-m", "brainage", "B", "O", "group", "--train", "--no-report"]
    assert "--gpus" not in torchrun_command(["B", "O", "group", "--train", "--gpus=2"], 2)


@pytest.mark.parametrize("extra, message", [
    (["group", "--train", "--gpus", "64"], "asks for 64 CUDA devices"),
    (["group", "--train", "--gpus", "0"], "give the number of GPUs"),
    (["participant", "--gpus", "2"], "--gpus is for group --train"),
])
def test_gpus_refused_with_the_fix(tmp_path, capsys, extra, message):
    bids, deriv = write_cohort(tmp_path, n=12)
    code = main([str(bids), str(deriv), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_group_gpus_in_the_config_launches_the_ranks_and_the_flag_overrides_it(tmp_path, capsys):
    bids, deriv = write_cohort(tmp_path, n=12)
    config = tmp_path / "gpus.yaml"
    config.write_text(CONFIG.replace("  attributions: false\n", "  attributions: false\n  gpus: 64\n"))
    code = main([str(bids), str(deriv), "group", "--train", "--config-file", str(config), "--no-report"])
    assert code == 2  # the config asks for 64 GPUs: refused, naming the key that asked
    err = capsys.readouterr().err
    assert "group.gpus 64 asks for 64 CUDA devices" in err and "Give group.gpus" in err
    code = main([str(bids), str(deriv), "group", "--train", "--config-file", str(config), "--no-report",
                 "--gpus", "32"])
    assert code == 2 and "--gpus 32 asks for 32 CUDA devices" in capsys.readouterr().err
    config.write_text(CONFIG.replace("  attributions: false\n", "  attributions: false\n  gpus: 0\n"))
    code = main([str(bids), str(deriv), "group", "--train", "--config-file", str(config), "--no-report"])
    assert code == 2 and "gpus" in capsys.readouterr().err


@pytest.mark.slow
def test_two_gloo_ranks_train_the_group_level(tmp_path):
    bids, deriv = write_cohort(tmp_path, n=42)
    config = tmp_path / "ddp.yaml"
    config.write_text(CONFIG)
    argv = [str(bids), str(deriv), "group", "--train", "--config-file", str(config), "--no-report",
            "--gpus", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def run():
        return subprocess.run(torchrun_command(argv, 2), env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)

    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 alone reports and writes; rank 1's copy went to a scratch folder
    assert done.stdout.count("group level (") == 1
    out = deriv / "group"
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    people = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert len(pred) == 2 * len(people) and np.isfinite(pred["predicted_age"]).all()
    meta = json.loads((out / "model" / "metadata.json").read_text())
    assert meta["training_data"]["world_size"] == 2  # the bundle was trained by two ranks
    pid = json.loads((out / "pid.json").read_text())
    assert pid["available"] and len(pid["per_fold"]) == 3
    # a rerun: rank 0 finds the results up to date and rank 1 follows it (no deadlock)
    again = run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stdout
