"""`flowtide train JOB.yaml` as a user runs it: a local cluster, a job to the end, a clear summary."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_flowtide_train_runs_a_job_to_the_end_on_a_local_cluster(tmp_path):
    config = tmp_path / "flowtide.yaml"
    config.write_text(
        "cluster:\n  pools:\n    prefill: {nodes: 0}\n    decode: {nodes: 0}\n    train: {nodes: 1, num_cpus_per_node: 1}\n"
        f"training:\n  checkpoint_dir: {tmp_path / 'ckpt'}\n"
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: cli-e2e\nmodel: workers.elastic.mlp:build_model\noptimizer: workers.elastic.mlp:build_optimizer\n"
        "data: workers.elastic.mlp:build_dataset\nstep: workers.elastic.mlp:mse_step\n"
        "steps: 30\nglobal_batch_size: 32\nmicro_batch_size: 8\nmax_peers: 1\ncheckpoint_every_steps: 10\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "train", str(job), "--config", str(config), "--timeout-s", "300"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "finished step 30" in out.stdout
    assert (tmp_path / "ckpt" / "cli-e2e" / "step-0000000030" / "manifest.json").is_file()
