"""``chiffon agent infra|desktop``: flags, and the errors a person can fix, as one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from chiffon import cli
from chiffon.agents.capacity import hostname
from chiffon.bus import open_bus
from chiffon.settings import Settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CHIFFON_BROKER_URL", "CHIFFON_INFRA_REPO", "CHIFFON_CONFIG", "CHIFFON_LAB_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHIFFON_HOME", str(tmp_path / "home"))


def test_agent_commands_are_listed() -> None:
    result = runner.invoke(cli.app, ["agent", "--help"])
    assert result.exit_code == 0
    assert "infra" in result.output and "desktop" in result.output
    infra = runner.invoke(cli.app, ["agent", "infra", "--help"])
    for flag in ("--id", "--label", "--max-concurrent", "--heartbeat-interval", "--infra-repo"):
        assert flag in infra.output
    desktop = runner.invoke(cli.app, ["agent", "desktop", "--help"])
    for flag in ("--id", "--label", "--busy", "--busy-process", "--heartbeat-interval"):
        assert flag in desktop.output


def test_an_agent_without_a_broker_says_what_to_set(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["agent", "desktop"])
    assert result.exit_code == 2
    assert "set CHIFFON_BROKER_URL" in result.output and "Traceback" not in result.output


def test_the_infra_agent_needs_its_checkout(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["agent", "infra", "--infra-repo", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert f"the homelab-infra checkout {tmp_path / 'missing'} does not exist" in result.output


def test_a_bad_label_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["agent", "desktop", "--label", "no-equals-sign"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_labels_add_to_the_defaults() -> None:
    assert cli.parse_labels(["site=attic", "role=gpu"], {"role": "desktop", "gpu": "false"}) == {
        "role": "gpu",
        "gpu": "false",
        "site": "attic",
    }
    with pytest.raises(typer.BadParameter):
        cli.parse_labels(["=x"], {})


def test_chiffon_up_embeds_both_agents_with_a_lab_root_in_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    loops = cli.embedded_agent_loops(settings, open_bus(None, prefix="t."), tmp_path / "infra")
    assert [loop.name for loop in loops] == [f"agent infra-{hostname()}", f"agent desktop-{hostname()}"]
    assert cli.embedded_lab_root(settings) == str(tmp_path / "home" / "lab")
    assert cli.agent_work_dir(settings, "infra-x") == tmp_path / "home" / "agents" / "infra-x"


def test_the_lab_root_can_be_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIFFON_LAB_ROOT", str(tmp_path / "elsewhere"))
    assert cli.embedded_lab_root(Settings(home=tmp_path / "home")) == str(tmp_path / "elsewhere")
