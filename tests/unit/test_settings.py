"""Settings: flags over CHIFFON_* variables over chiffon.yaml over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from chiffon.cli import StartupError, load_settings
from chiffon.resources.yamlio import ResourceError
from chiffon.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("CHIFFON_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'chiffon.db'}"
    assert settings.resolved_intents_repo == str(tmp_path / "intents")
    assert settings.resolved_infra_repo == tmp_path / "homelab-infra"
    assert (settings.host, settings.port) == ("127.0.0.1", 8787)
    assert not settings.listens_beyond_loopback


def test_yaml_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "chiffon.yaml").write_text("port: 9000\nhost: 127.0.0.2\nlog_level: DEBUG\n")
    assert Settings(home=tmp_path).port == 9000
    monkeypatch.setenv("CHIFFON_PORT", "9100")
    assert Settings(home=tmp_path).port == 9100
    assert Settings(home=tmp_path, port=9200).port == 9200
    assert Settings(home=tmp_path).log_level == "DEBUG"


def test_chiffon_config_points_at_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "elsewhere.yaml"
    config.write_text("intents_branch: production\n")
    monkeypatch.setenv("CHIFFON_CONFIG", str(config))
    assert Settings(home=tmp_path).intents_branch == "production"


def test_unknown_key_in_the_file_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "chiffon.yaml").write_text("prot: 9000\n")
    with pytest.raises(ValidationError, match="prot"):
        Settings(home=tmp_path)


def test_hostile_config_file_is_refused_by_the_same_loader(tmp_path: Path) -> None:
    (tmp_path / "chiffon.yaml").write_text("a: &a [1,2]\nb: !!python/object:os.system x\n")
    with pytest.raises(ResourceError, match=r"chiffon\.yaml"):
        Settings(home=tmp_path)


def test_cli_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "chiffon.yaml").write_text("port: not-a-number\n")
    with pytest.raises(StartupError, match="invalid settings: port"):
        load_settings(home=tmp_path)


@pytest.mark.parametrize(
    ("host", "beyond"),
    [
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
        ("0.0.0.0", True),
        ("192.168.1.5", True),
        ("myhost.lan", True),
    ],
)
def test_listens_beyond_loopback(host: str, beyond: bool, tmp_path: Path) -> None:
    assert Settings(home=tmp_path, host=host).listens_beyond_loopback is beyond


def test_an_empty_variable_means_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIFFON_API_TOKEN", "")
    monkeypatch.setenv("CHIFFON_DATABASE_URL", "")
    settings = Settings(home=tmp_path)
    assert settings.api_token is None and settings.database_url is None
