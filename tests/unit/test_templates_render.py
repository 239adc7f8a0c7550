"""Template parameters: strict validation, quoting, and what each kind renders (no Ansible run here)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from chiffon.agents.templates.render import KINDS, TemplateParamError, render, validate, var_prefix

GOTIFY = {"name": "gotify", "image": "gotify/server", "port": "8080"}


def play(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    [parsed] = yaml.safe_load(render(kind, params))
    return parsed  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("params", "param", "says"),
    [
        ({**GOTIFY, "name": "Gotify"}, "name", "DNS-1123"),
        ({**GOTIFY, "name": "a" * 64}, "name", "at most 63"),
        ({**GOTIFY, "name": "-gotify"}, "name", "DNS-1123"),
        ({**GOTIFY, "name": "gotify\nhosts: evil"}, "name", "one line"),
        ({**GOTIFY, "image": "gotify/server:{{ lookup('pipe', 'id') }}"}, "image", "Jinja"),
        ({**GOTIFY, "image": "Gotify Server"}, "image", "image reference"),
        ({**GOTIFY, "image": 'x" # '}, "image", "image reference"),
        ({**GOTIFY, "port": "0"}, "port", "outside 1-65535"),
        ({**GOTIFY, "port": "65536"}, "port", "outside 1-65535"),
        ({**GOTIFY, "port": "80; rm -rf /"}, "port", "not a port"),
        ({**GOTIFY, "port": True}, "port", "port number"),
        ({**GOTIFY, "host_port": "-1"}, "host_port", "outside 1-65535"),
        ({**GOTIFY, "stack_dir": "/opt/../etc"}, "stack_dir", "without '..'"),
        ({**GOTIFY, "stack_dir": "relative/dir"}, "stack_dir", "absolute path"),
        ({**GOTIFY, "bind_address": "localhost"}, "bind_address", "IP address"),
        ({**GOTIFY, "health_path": "health"}, "health_path", "URL path"),
        ({**GOTIFY, "health_status": "200,abc"}, "health_status", "whole number"),
        ({**GOTIFY, "hosts": "all\n- hosts: x"}, "hosts", "one line"),
        ({**GOTIFY, "tags": "Deploy"}, "tags", "tag"),
        ({**GOTIFY, "tag": "1.0", "image": "gotify/server:2.0"}, "tag", "one place"),
        ({**GOTIFY, "become": "maybe"}, "become", "true or false"),
        ({**GOTIFY, "vars": ["x"]}, "var", "KEY=VALUE"),
        ({**GOTIFY, "vars": ["Bad-Key=1"]}, "var", "variable name"),
        ({**GOTIFY, "vars": ["x: y=1"]}, "var", "variable name"),
        ({**GOTIFY, "vars": ["note={{ lookup('pipe', 'id') }}"]}, "var", "Jinja"),
        ({**GOTIFY, "vars": ["note={% raw %}"]}, "var", "Jinja"),
        ({**GOTIFY, "vars": ["gotify_port=1"]}, "var", "clash"),
        ({**GOTIFY, "vars": ["ansible_become=true"]}, "var", "reserved"),
        ({**GOTIFY, "vars": ["a=1", "a=2"]}, "var", "twice"),
        ({**GOTIFY, "vars": ["a=line\nnext: 1"]}, "var", "one line"),
        ({**GOTIFY, "colour": "blue"}, "colour", "not a parameter"),
        ({"name": "gotify", "port": "80"}, "image", "required"),
    ],
)
def test_bad_parameters_are_refused_naming_them(params: dict[str, Any], param: str, says: str) -> None:
    with pytest.raises(TemplateParamError) as caught:
        render("compose-service", params)
    assert caught.value.param == param
    assert says in str(caught.value)
    assert str(caught.value).startswith(f"--{param.replace('_', '-')}:")


@pytest.mark.parametrize(
    ("kind", "params", "param"),
    [
        ("systemd-service", {"name": "x", "exec_start": "node_exporter"}, "exec_start"),
        ("systemd-service", {"name": "x", "exec_start": "/bin/x", "user": "Root;"}, "user"),
        ("systemd-service", {"name": "x", "exec_start": "/bin/x", "restart": "sometimes"}, "restart"),
        ("config-file", {"name": "x", "dest": "/etc/x", "mode": "644"}, "mode"),
        ("config-file", {"name": "x", "dest": "/etc/x", "validate": "nginx -t"}, "validate"),
        ("config-file", {"name": "x", "dest": "/etc/x", "src": "../../secret.j2"}, "src"),
        ("config-file", {"name": "x"}, "dest"),
        ("container", {**GOTIFY, "engine": "lxc"}, "engine"),
        ("nope", {}, "kind"),
    ],
)
def test_bad_parameters_of_other_kinds(kind: str, params: dict[str, Any], param: str) -> None:
    with pytest.raises(TemplateParamError) as caught:
        render(kind, params)
    assert caught.value.param == param


def test_values_are_quoted_so_they_cannot_add_keys() -> None:
    tricky = 'hello: world # not a comment "quoted" \\ back'
    parsed = play("compose-service", {**GOTIFY, "vars": {"note": tricky, "other": "x=y"}})
    assert parsed["vars"]["note"] == tricky
    assert parsed["vars"]["other"] == "x=y"
    assert parsed["hosts"] == "all"


def test_image_tag_is_split_and_defaults_to_latest() -> None:
    assert validate("container", {**GOTIFY, "image": "ghcr.io:5000/org/app:1.2"})["tag"] == "1.2"
    assert (
        validate("container", {**GOTIFY, "image": "ghcr.io:5000/org/app:1.2"})["image"]
        == "ghcr.io:5000/org/app"
    )
    assert validate("container", GOTIFY)["tag"] == "latest"


def test_names_starting_with_a_digit_get_a_valid_variable_prefix() -> None:
    assert var_prefix("1password-connect") == "svc_1password_connect"
    parsed = play("compose-service", {**GOTIFY, "name": "1password-connect"})
    assert "svc_1password_connect_port" in parsed["vars"]


def test_compose_service_has_handler_health_check_tags_and_docker_guard() -> None:
    parsed = play("compose-service", {**GOTIFY, "host_port": "18080"})
    assert parsed["become"] is False
    assert parsed["vars"]["gotify_port"] == 8080 and parsed["vars"]["gotify_host_port"] == 18080
    [handler] = parsed["handlers"]
    assert handler["listen"] == "restart gotify"
    modules = [next(k for k in task if k.startswith("ansible.")) for task in parsed["tasks"]]
    assert "ansible.builtin.uri" in modules and "ansible.builtin.wait_for" in modules
    render_task = next(t for t in parsed["tasks"] if "ansible.builtin.copy" in t)
    assert render_task["notify"] == "restart gotify"
    start = next(t for t in parsed["tasks"] if t["name"] == "Start the gotify stack")
    assert start["when"] == "gotify_docker_available"
    assert all(task.get("tags") for task in parsed["tasks"])


def test_config_file_becomes_root_only_where_needed() -> None:
    etc = play("config-file", {"name": "caddy", "dest": "/etc/caddy/Caddyfile", "service": "caddy"})
    home = play("config-file", {"name": "app", "dest": "/home/me/app.conf"})
    assert etc["become"] is False and home["become"] is False  # never at play level
    assert next(t for t in etc["tasks"] if "ansible.builtin.template" in t)["become"] is True
    assert next(t for t in home["tasks"] if "ansible.builtin.template" in t)["become"] is False
    assert "handlers" in etc and "handlers" not in home


def test_every_kind_lists_its_parameters() -> None:
    assert set(KINDS) == {"compose-service", "container", "systemd-service", "config-file"}
    for kind in KINDS.values():
        assert any(p.required for p in kind.params)
        assert kind.example
