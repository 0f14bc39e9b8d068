"""Bad training job specs fail at submit with a message naming the field."""

from __future__ import annotations

import pytest

from orchestrator.config import TrainingConfig
from orchestrator.training.spec import JobSpecError, load_job_spec, parse_job_spec

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
    task = parse_job_spec(GOOD).to_task(TrainingConfig(checkpoint_dir="/tmp/ckpt"))
    assert task.num_micro_batches == 8 and task.peer_label_selector == {"pool": "train"}


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
    ],
)
def test_bad_spec_fails_at_submit_naming_the_field(override, field, message):
    with pytest.raises(JobSpecError) as err:
        parse_job_spec({**GOOD, **override})
    assert f"{field}: " in str(err.value) and message in str(err.value)


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
