"""One typed config: defaults, YAML, env overrides, and errors that name the field."""

import pytest

from orchestrator.config import ConfigError, Pool, load_config


def test_defaults_give_three_pools_and_disaggregated_serving():
    config = load_config()
    assert set(config.cluster.pools) == set(Pool)
    assert config.serving.mode == "disaggregated"
    assert config.model.path is None


def test_yaml_file_then_env_override(tmp_path, monkeypatch):
    path = tmp_path / "flowtide.yaml"
    path.write_text("serving:\n  mode: colocated\n  http_port: 9001\ncluster:\n  pools:\n    decode:\n      nodes: 3\n")
    monkeypatch.setenv("FLOWTIDE_SERVING__HTTP_PORT", "9002")
    config = load_config(path)
    assert config.serving.mode == "colocated"
    assert config.serving.http_port == 9002
    assert config.cluster.pools[Pool.DECODE].nodes == 3
    assert config.cluster.pools[Pool.PREFILL].nodes == 1


@pytest.mark.parametrize(
    "yaml_text, field",
    [
        ("serving:\n  mode: sideways\n", "serving.mode"),
        ("serving:\n  http_port: 70000\n", "serving.http_port"),
        ("serving:\n  prefill:\n    min_replicas: 3\n    max_replicas: 1\n", "serving.prefill"),
        ("model:\n  max_prompt_tokens: 9000\n", "model"),
        ("cluster:\n  pools:\n    gpuz:\n      nodes: 1\n", "cluster.pools.gpuz"),
        ("serving:\n  typo_field: 1\n", "serving.typo_field"),
    ],
)
def test_bad_value_fails_naming_the_field(tmp_path, yaml_text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert field in str(info.value)


def test_bad_env_value_names_the_field(monkeypatch):
    monkeypatch.setenv("FLOWTIDE_SERVING__MAX_BATCH_SIZE", "-3")
    with pytest.raises(ConfigError, match="serving.max_batch_size"):
        load_config()


def test_override_is_validated():
    with pytest.raises(ConfigError, match="serving.mode: .*'disaggregated' or 'colocated'"):
        load_config(**{"serving.mode": "both"})


def test_overrides_reach_pools_and_name_the_bad_part():
    assert load_config(**{"cluster.pools.train.nodes": 0}).cluster.pools["train"].nodes == 0
    with pytest.raises(ConfigError, match=r"cluster.pools.gpu.nodes: no 'gpu' in \['decode', 'prefill', 'train'\]"):
        load_config(**{"cluster.pools.gpu.nodes": 1})
    with pytest.raises(ConfigError, match="cluster.pools.train.nodes: .*greater than or equal to 0"):
        load_config(**{"cluster.pools.train.nodes": -1})
    with pytest.raises(ConfigError, match="unknown field 'nope'"):
        load_config(**{"serving.nope.x": 1})


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("serving: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_model_path_without_a_config_or_weights_is_refused_before_anything_starts(tmp_path):
    from orchestrator.app import resolve_model_path

    model = tmp_path / "ckpt"
    model.mkdir()
    with pytest.raises(ConfigError, match=r"model.path: .*ckpt is not a Hugging Face checkpoint directory"):
        resolve_model_path(load_config(**{"model.path": str(model)}))
    (model / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"model.path: .*ckpt holds no weights \(no \*.safetensors or \*.bin"):
        resolve_model_path(load_config(**{"model.path": str(model)}))
    (model / "model-00001-of-00002.safetensors").write_bytes(b"")  # a shard counts: only presence is checked
    assert resolve_model_path(load_config(**{"model.path": str(model)})) == str(model)
