"""Every template, rendered with typical and edge parameters, passes ansible-playbook
--syntax-check and ansible-lint's production profile (real runs, offline); the CLI writes files
safely; a rendered playbook runs on a host without Docker or systemd and skips what it cannot do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chiffon.agents.suggestions.lint import run_ansible_lint
from chiffon.agents.templates.render import render
from chiffon.api.ctl import app

BIN = Path(sys.executable).parent

CASES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "compose-typical",
        "compose-service",
        {"name": "gotify", "image": "gotify/server", "port": 80, "host_port": 8080},
    ),
    (
        "compose-edge",
        "compose-service",
        {
            "name": "a" * 30 + "-" + "b" * 32,  # 63 characters, the longest DNS-1123 label
            "image": "registry.example.com:5000/team/app:2024.01-rc1",
            "port": 65535,
            "host_port": 1,
            "bind_address": "::1",
            "health_path": "/api/health?full=1",
            "health_status": "200,204,401",
            "stack_dir": "/srv/stacks/x",
            "become": "true",
            "hosts": "infra:&docker",
            "tags": "apps,web",
            "vars": ['note=hello: world # "quoted"', "empty="],
        },
    ),
    ("container-typical", "container", {"name": "whoami", "image": "traefik/whoami:v1.10", "port": 80}),
    (
        "container-edge",
        "container",
        {
            "name": "9lives",
            "image": "quay.io/podman/hello",
            "port": 8080,
            "engine": "podman",
            "restart": "no",
        },
    ),
    (
        "systemd-typical",
        "systemd-service",
        {
            "name": "node-exporter",
            "exec_start": "/usr/local/bin/node_exporter --web.listen-address=:9100",
            "port": 9100,
        },
    ),
    (
        "systemd-edge",
        "systemd-service",
        {
            "name": "backup-agent",
            "exec_start": "/opt/backup/bin/agent --config '/etc/backup agent.conf' --flag=%h",
            "user": "backup",
            "description": 'Backup agent: nightly "restic" runs',
            "unit_dir": "/home/me/.config/systemd/user",
            "restart": "always",
        },
    ),
    (
        "config-typical",
        "config-file",
        {
            "name": "caddy",
            "dest": "/etc/caddy/Caddyfile",
            "service": "caddy",
            "validate": "caddy validate --config %s",
        },
    ),
    (
        "config-edge",
        "config-file",
        {
            "name": "app",
            "dest": "/home/me/app/settings.yml",
            "src": "files/app.yml.j2",
            "owner": "me",
            "mode": "0600",
        },
    ),
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("rendered")
    names = []
    for case, kind, params in CASES:
        (folder / f"{case}.yml").write_text(render(kind, {**params, "filename": f"{case}.yml"}))
        names.append(f"{case}.yml")
    return folder, names


def test_every_template_passes_syntax_check(rendered: tuple[Path, list[str]]) -> None:
    folder, names = rendered
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", *names],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_every_template_passes_ansible_lint_production(rendered: tuple[Path, list[str]]) -> None:
    folder, names = rendered
    report = await run_ansible_lint(folder, names, profile="production", timeout=300)
    assert report.findings == [], [f"{f.path}:{f.line} {f.rule} {f.message}" for f in report.findings]
    assert report.returncode == 0


@pytest.mark.parametrize(
    ("kind", "skipped", "written"),
    [
        (
            "compose-service",
            "the container start and health check are skipped",
            "stacks/gotify/docker-compose.yml",
        ),
        ("container", "the container steps and health check are skipped", "containers/gotify/gotify.env"),
    ],
)
def test_playbook_runs_without_docker_and_is_idempotent(
    tmp_path: Path, kind: str, skipped: str, written: str
) -> None:
    """With a `docker` that cannot reach its daemon, files are written and the start is skipped."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    docker = fake_bin / "docker"
    docker.write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock' >&2\nexit 1\n"
    )
    docker.chmod(0o755)
    playbook = tmp_path / "gotify.yml"
    playbook.write_text(render(kind, {"name": "gotify", "image": "gotify/server", "port": 80}))
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{fake_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    command = [
        str(BIN / "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        f"homelab_root={tmp_path / 'lab'}",
        str(playbook),
    ]
    changed = []
    for _ in range(2):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        assert "Cannot connect to the Docker daemon" in done.stdout
        assert skipped in done.stdout
        recap = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", done.stdout)
        assert recap, done.stdout[-2000:]
        changed.append(int(recap.group(1)))
    assert (tmp_path / "lab" / written).is_file()
    if kind == "compose-service":
        compose = (tmp_path / "lab" / written).read_text()
        assert 'image: "gotify/server:latest"' in compose and "0.0.0.0:80:80" in compose
    assert changed[0] >= 2 and changed[1] == 0


runner = CliRunner()


def test_cli_prints_writes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    args = [
        "template",
        "new",
        "compose-service",
        "--name",
        "gotify",
        "--image",
        "gotify/server",
        "--port",
        "8080",
    ]
    printed = runner.invoke(app, args)
    assert printed.exit_code == 0, printed.output
    assert printed.stdout.startswith("---\n# Deploy gotify")
    target = tmp_path / "gotify.yml"
    assert runner.invoke(app, [*args, "-o", str(target)]).exit_code == 0
    assert target.read_text() == printed.stdout.replace("gotify.yml", "gotify.yml")
    again = runner.invoke(app, [*args, "--port", "9090", "-o", str(target)])
    assert again.exit_code == 1 and "exists; pass --force" in again.stderr
    assert "9090" not in target.read_text()
    forced = runner.invoke(
        app, [*args[:-2], "--port", "9090", "--var", "owner=me", "-o", str(target), "--force"]
    )
    assert forced.exit_code == 0, forced.output
    assert "gotify_port: 9090" in target.read_text() and 'owner: "me"' in target.read_text()


def test_cli_bad_parameter_exits_1_naming_it() -> None:
    bad = runner.invoke(
        app, ["template", "new", "container", "--name", "web", "--image", "nginx", "--port", "70000"]
    )
    assert bad.exit_code == 1
    assert "--port: 70000 is outside 1-65535" in bad.stderr
    listed = runner.invoke(app, ["template", "list"])
    assert listed.exit_code == 0
    for kind in ("compose-service", "container", "systemd-service", "config-file"):
        assert kind in listed.stdout
