"""pipeline.toml validation: every error names its key path, the problem and the allowed values."""

import tomllib
from pathlib import Path

import pytest

from engine.assets import REPO_ROOT
from engine.config import ConfigError, load_config, parse_config

GOOD = """
[pipeline]
name = "t"
queue_size = 8

[[sources]]
type = "file"
id = "a"
path = "x.mp4"

[[stages]]
type = "centerface"

[[sinks]]
type = "file_sink"
directory = "out"

[[sinks]]
type = "zmq_push"
endpoint = "tcp://127.0.0.1:5999"
hwm = 10
"""


def _errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    return info.value.errors


def test_default_pipeline_toml_is_valid():
    config = load_config(REPO_ROOT / "pipeline.toml")
    assert [s.type for s in config.sources] == ["file"]
    assert [s.type for s in config.stages] == ["centerface", "landmarks"]
    assert {s.type for s in config.sinks} == {"file_sink", "zmq_pub"}
    assert config.pipeline.metrics_port is None


def test_good_config_builds_typed_options(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.pipeline.queue_size == 8 and config.sources[0].id == "a"
    assert config.sinks[1].options.hwm == 10 and config.sinks[0].options.directory == tmp_path / "out"


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    """As in DeepStream: the config's folder, not the working directory; absolute paths stay."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "p.toml").write_text(GOOD.replace('path = "x.mp4"', 'path = "clips/*.mp4"')
                                   + '[[stages]]\ntype = "landmarks"\nbundle = "/models/b"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config("configs/p.toml")
    assert config.sources[0].options.path == str(folder / "clips" / "*.mp4")
    assert config.sinks[0].options.directory == folder / "out"
    assert config.stages[1].options.bundle == "/models/b" and config.stages[1].options.engine_dir is None
    raw = parse_config(tomllib.loads(GOOD))  # a document without a file: paths stay as written
    assert raw.sources[0].options.path == "x.mp4" and raw.sinks[0].options.directory == Path("out")


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    (err,) = _errors(tmp_path, GOOD.replace("hwm = 10", "hwm = 10\nhwn = 3"))
    assert err.startswith("sinks[1].hwn: unknown key") and "endpoint" in err and "hwm" in err


def test_wrong_type_and_bad_value(tmp_path):
    text = GOOD.replace("hwm = 10", 'hwm = "lots"').replace("queue_size = 8", "queue_size = 0")
    errors = _errors(tmp_path, text)
    assert any(e.startswith("sinks[1].hwm:") and "integer" in e for e in errors), errors
    assert any(e.startswith("pipeline.queue_size:") and "greater than or equal to 1" in e for e in errors)
    (err,) = _errors(tmp_path, GOOD.replace('directory = "out"', 'format = "csv"'))
    assert err.startswith("sinks[0].format:") and "'msgpack' or 'jsonl'" in err


def test_unknown_plugin_lists_installed(tmp_path):
    (err,) = _errors(tmp_path, GOOD.replace('type = "file_sink"', 'type = "file_snk"'))
    assert err.startswith("sinks[0].type: unknown sink plugin 'file_snk'")
    assert "file_sink" in err and "zmq_pub" in err and "zmq_push" in err
    (err,) = _errors(tmp_path, GOOD.replace('type = "centerface"', 'type = "file_sink"'))
    assert err.startswith("stages[0].type: unknown stage plugin 'file_sink'") and "centerface" in err


def test_duplicate_source_id_and_missing_id(tmp_path):
    dup = GOOD + '\n[[sources]]\ntype = "file"\nid = "a"\npath = "y.mp4"\n'
    (err,) = _errors(tmp_path, dup)
    assert err == "sources[1].id: duplicate source id 'a' (also sources[0].id)"
    (err,) = _errors(tmp_path, GOOD.replace('id = "a"\n', ""))
    assert err.startswith("sources[0].id: required")


def test_unknown_top_level_and_pipeline_keys(tmp_path):
    errors = _errors(tmp_path, "[pipline]\n" + GOOD.replace('name = "t"', 'name = "t"\nlog_levl = "INFO"'))
    assert any(e.startswith("pipline: unknown key") for e in errors)
    assert any(e.startswith("pipeline.log_levl: unknown key") and "log_level" in e for e in errors)


def test_not_toml_and_missing_file(tmp_path):
    (err,) = _errors(tmp_path, "[[sources]\n")
    assert err.startswith("not valid TOML")
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_broken_third_party_plugin_stops_only_configs_that_use_it(monkeypatch, tmp_path):
    """An entry point that fails to import is skipped with its reason; a config naming it gets that reason."""
    from importlib.metadata import EntryPoint

    import engine.plugin as plugin_module
    from engine.cli import describe_plugins

    real = plugin_module.entry_points
    bad = EntryPoint("bad_sink", "no_such_package.sinks:BadSink", plugin_module.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugin_module, "entry_points", lambda group: [*real(group=group), bad])
    plugins = plugin_module.discover()
    assert "file_sink" in plugins and "bad_sink" not in plugins
    assert "no_such_package" in plugins.broken["bad_sink"]
    assert load_config(REPO_ROOT / "pipeline.toml").sinks  # a pipeline that does not use it still loads
    (err,) = _errors(tmp_path, GOOD.replace('type = "file_sink"', 'type = "bad_sink"').replace('directory = "out"\n', ""))
    assert err.startswith("sinks[0].type: plugin 'bad_sink' (no_such_package.sinks:BadSink) failed to load"), err
    assert describe_plugins()["broken"][0]["name"] == "bad_sink"
