from pathlib import Path

import pytest

from torchship.sdk.config import ProjectPaths, ServerConfig, java_regex_literal, read_properties, write_properties
from torchship.sdk.errors import ConfigError


def test_properties_parsing(tmp_path):
    f = tmp_path / "c.properties"
    f.write_text(
        "# comment\n! also a comment\n\n"
        "inference_address=http://127.0.0.1:9000\n"
        "management_address : http://127.0.0.1:9001\n"
        "long=first,\\\n    second\n"
        "path=C\\\\dir\\\\x\n"
        "spaced   value with spaces\n"
    )
    props = read_properties(f)
    assert props["inference_address"] == "http://127.0.0.1:9000"
    assert props["management_address"] == "http://127.0.0.1:9001"
    assert props["long"] == "first,second"
    assert props["path"] == "C\\dir\\x"
    assert props["spaced"] == "value with spaces"


def test_write_then_read_round_trips_backslashes(tmp_path):
    f = tmp_path / "c.properties"
    regex = "file://" + java_regex_literal("/a/b.c/") + "[^/]+\\.mar"
    write_properties(f, {"allowed_urls": regex, "x": "1"}, header="two\nlines")
    assert read_properties(f) == {"allowed_urls": regex, "x": "1"}
    assert f.read_text().startswith("# two\n# lines\n")


def test_java_regex_literal_quotes_special_characters():
    assert java_regex_literal("/tmp/a.b") == "\\Q/tmp/a.b\\E"
    assert java_regex_literal("x\\Ey") == "\\Qx\\E\\\\E\\Qy\\E"


def test_server_config_urls_and_store(tmp_path):
    f = tmp_path / "config.properties"
    f.write_text("inference_address=127.0.0.1:7000/\nmodel_store=store\n")
    cfg = ServerConfig.load(f)
    assert cfg.inference_url == "http://127.0.0.1:7000"
    assert cfg.management_url == "http://127.0.0.1:8081"
    assert cfg.model_store == (tmp_path / "store").resolve()
    assert cfg.listen_addresses()["inference"] == ("127.0.0.1", 7000)


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        ServerConfig.load(tmp_path / "nope.properties")


def test_repo_config_is_secure():
    root = Path(__file__).resolve().parents[2]
    cfg = ServerConfig.load(root / "config.properties")
    for name, (host, _) in cfg.listen_addresses().items():
        assert host == "127.0.0.1", name
    assert cfg.get("disable_token_authorization") in (None, "false")
    assert cfg.get("install_py_dep_per_model") == "false"
    assert cfg.get("metrics_mode") == "prometheus"
    assert cfg.get("enable_model_api") == "true"


def test_project_found_from_a_subfolder(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHSHIP_HOME", raising=False)
    (tmp_path / "config.properties").write_text("model_store=ms\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    project = ProjectPaths.find(sub)
    assert project.root == tmp_path.resolve()
    assert project.model_store == (tmp_path / "ms").resolve()
    assert project.server_dir == tmp_path.resolve() / ".torchship" / "server"
