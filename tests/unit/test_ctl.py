"""chiffonctl behaviour that needs no server: validate, exit codes, formatting."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chiffon.api.ctl import age, app, comparable, expand_paths
from tests.helpers import BOMB, intent_yaml

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_validate_accepts_the_examples() -> None:
    result = runner.invoke(
        app,
        [
            "validate",
            "-f",
            str(ROOT / "examples/intents"),
            "--infra-repo",
            str(ROOT / "examples/homelab-infra"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 intents valid" in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BOMB, "alias"),
        ("apiVersion: chiffon.dev/v1alpha1\nkind: [\n", "bad.yaml:3"),
        (intent_yaml("x").replace("name: x", "name: X_bad"), "bad.yaml:5: metadata.name"),
        (intent_yaml("x", playbook="/etc/passwd"), "bad.yaml:10: spec.steps[0].playbook"),
        (intent_yaml("x") + "status: {observedGeneration: 1}\n", "bad.yaml:13: status"),
        ("!!python/object/apply:os.system ['echo hi']\n", "python/object"),
    ],
    ids=["alias-bomb", "syntax", "name", "absolute-path", "status-in-git", "python-tag"],
)
def test_validate_rejects_with_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    result = runner.invoke(app, ["validate", str(write(tmp_path, "bad.yaml", text))])
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output


def test_validate_checks_playbooks_exist_in_the_infra_repo(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", intent_yaml("x", playbook="ansible/playbooks/nope.yml"))
    result = runner.invoke(app, ["validate", str(path), "--infra-repo", str(ROOT / "examples/homelab-infra")])
    assert result.exit_code == 1
    assert "x.yaml:10: spec.steps[0].playbook: ansible/playbooks/nope.yml does not exist" in result.output


def test_validate_without_files_is_a_usage_error() -> None:
    assert runner.invoke(app, ["validate"]).exit_code == 2


def test_folders_are_walked_skipping_hidden_entries(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", "x")
    write(tmp_path, "a/c.yml", "x")
    write(tmp_path, ".git/d.yaml", "x")
    write(tmp_path, "notes.txt", "x")
    assert [p.relative_to(tmp_path).as_posix() for p in expand_paths([tmp_path])] == ["a/c.yml", "b.yaml"]


def test_apply_of_a_missing_file_fails_before_contacting_a_server(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--server", "http://127.0.0.1:9", "apply", "-f", str(tmp_path / "nope.yaml")]
    )
    assert result.exit_code == 1 and "no such file or folder" in result.output


def test_unreachable_server_exits_2_with_advice() -> None:
    result = runner.invoke(app, ["--server", "http://127.0.0.1:9", "get", "intents"])
    assert result.exit_code == 2
    assert "cannot reach the Chiffon server at http://127.0.0.1:9" in result.output


@pytest.mark.parametrize(
    ("seconds", "want"), [(5, "5s"), (59, "59s"), (60, "1m"), (7200, "2h"), (90000, "1d")]
)
def test_age(seconds: int, want: str) -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    then = datetime.fromtimestamp(now.timestamp() - seconds, UTC).isoformat()
    assert age(then, now) == want


def test_comparable_fills_defaults_so_equal_specs_compare_equal() -> None:
    short = {
        "apiVersion": "chiffon.dev/v1alpha1",
        "kind": "DeploymentIntent",
        "metadata": {"name": "a"},
        "spec": {"steps": [{"name": "s", "playbook": "p.yml"}]},
    }
    long = {**short, "spec": {**short["spec"], "approval": "Manual", "priority": "Normal"}}
    assert comparable(short) == comparable(long)


def test_describe_shows_how_the_catalog_resolved_a_goal() -> None:
    from chiffon.api.ctl import plan_lines

    step = {
        "name": "deploy",
        "playbook": "ansible/playbooks/kuma-deployment.yml",
        "contentHash": "e0c90cde78e5" * 5,
        "catalog": {"query": "deploy uptime kuma", "score": 0.41, "confident": False, "runnerUp": "x.yml"},
    }
    lines = plan_lines({"digest": "a" * 64, "risk": "High", "steps": [step]})
    assert lines[-1].strip() == (
        'from the catalog: "deploy uptime kuma" scored 0.41 (LOW CONFIDENCE: needs approval); '
        "runner-up x.yml"
    )
