"""Bad training job specs fail at submit with a message naming the field."""

from __future__ import annotations

import pytest

from orchestrator.config import TrainingConfig
from orchestrator.training.spec import JobSpecError, load_job_spec, parse_job_spec, resolve_backend
from workers.elastic.backend import Backend, nccl_available

GOOD = dict(
    name="job-1",
    model="workers.elastic.mlp:build_model",
    optimizer="workers.elastic.mlp:build_optimizer",
    data="workers.elastic.mlp:build_dataset",
    step="workers.elastic.mlp:mse_step",
    steps=10,
    global_batch_size=64,
    micro_batch_size=8,
)


def test_good_spec_builds_a_task():
    task = parse_job_spec(GOOD).to_task(TrainingConfig(checkpoint_dir="/tmp/ckpt"), node_gpus=[0.0, 0.0])
    assert task.num_micro_batches == 8 and task.peer_label_selector == {"pool": "train"}
    assert task.backend is Backend.GLOO  # "auto" on a pool without GPUs


def test_the_task_carries_the_configured_peer_start_timeout():
    training = TrainingConfig(checkpoint_dir="/tmp/ckpt", peer_start_timeout_s=12.5)
    assert parse_job_spec(GOOD).to_task(training, node_gpus=[0.0]).peer_start_timeout_s == 12.5
    assert TrainingConfig().peer_start_timeout_s == 300.0
    with pytest.raises(ValueError):
        TrainingConfig(peer_start_timeout_s=0)


@pytest.mark.parametrize(
    "override, field, message",
    [
        (dict(step="workers.elastic.mlp:train_step_that_does_not_exist"), "step", "has no attribute"),
        (dict(model="nope.module:build"), "model", "cannot import module"),
        (dict(min_peers=4, max_peers=2), "<root>", "min_peers (4) must not exceed max_peers (2)"),
        (dict(pool="gpu-spot"), "pool", "unknown pool 'gpu-spot' (known: prefill, decode, train)"),
        (dict(micro_batch_size=7), "<root>", "multiple of micro_batch_size"),
        (dict(steps=0), "steps", "greater than or equal to 1"),
        (dict(typo_field=1), "typo_field", "Extra inputs are not permitted"),
        (dict(backend="cuda"), "backend", "Input should be 'auto', 'gloo' or 'nccl'"),
    ],
)
def test_bad_spec_fails_at_submit_naming_the_field(override, field, message):
    with pytest.raises(JobSpecError) as err:
        parse_job_spec({**GOOD, **override})
    assert f"{field}: " in str(err.value) and message in str(err.value)


@pytest.mark.skipif(nccl_available(), reason="this torch build has NCCL")
def test_nccl_with_a_torch_build_without_nccl_fails_at_parse_naming_the_field():
    with pytest.raises(JobSpecError) as err:
        parse_job_spec({**GOOD, "backend": "nccl"})
    assert "backend: nccl needs a torch build with NCCL (CUDA)" in str(err.value)


@pytest.mark.parametrize(
    "requested, node_gpus, nccl_built, expected",
    [
        ("auto", [0.0, 0.0], False, Backend.GLOO),
        ("auto", [0.0, 1.0], True, Backend.NCCL),  # a mixed pool: NCCL peers go to the GPU nodes
        ("gloo", [8.0], True, Backend.GLOO),  # asked for: CPU training, no GPU reserved
        ("nccl", [2.0], True, Backend.NCCL),
    ],
)
def test_backend_resolves_from_the_pools_gpus(requested, node_gpus, nccl_built, expected):
    assert resolve_backend(requested, "train", node_gpus, nccl_built) is expected


@pytest.mark.parametrize(
    "requested, node_gpus, nccl_built, message",
    [
        ("nccl", [0.0, 0.0], True, "backend: nccl needs GPUs, but no alive node of pool 'train' has one"),
        ("nccl", [], True, "backend: nccl needs GPUs"),
        ("auto", [1.0], False, "backend: pool 'train' has GPUs but torch"),
        ("auto", [], True, "backend: 'auto' cannot tell whether pool 'train' has GPUs"),
    ],
)
def test_backend_that_cannot_run_on_the_pool_fails_at_submit_naming_the_field(requested, node_gpus, nccl_built, message):
    with pytest.raises(JobSpecError) as err:
        resolve_backend(requested, "train", node_gpus, nccl_built)
    assert message in str(err.value)


def test_missing_function_field_is_named():
    spec = dict(GOOD)
    del spec["step"]
    with pytest.raises(JobSpecError, match="step: Field required"):
        parse_job_spec(spec)


def test_example_job_file_is_valid():
    assert load_job_spec("examples/train_mlp.yaml").name == "mlp-demo"


def test_unreadable_job_file_is_a_clear_error(tmp_path):
    with pytest.raises(JobSpecError, match="does not exist"):
        load_job_spec(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(JobSpecError, match="must hold a mapping"):
        load_job_spec(bad)


def test_cli_rejects_bad_job_with_exit_code_2(tmp_path, capsys):
    from orchestrator.cli import main

    bad = tmp_path / "job.yaml"
    bad.write_text("name: j\nmodel: m:f\n")
    assert main(["train", str(bad)]) == 2
    assert "invalid training job" in capsys.readouterr().err
