"""Render playbook templates for common homelab jobs, from strictly validated parameters.

Four kinds (:data:`KINDS`): a docker compose service, a plain container (Docker
or Podman), a systemd service, and a config file with a restart handler. Each
is a Jinja2 file beside this module, rendered with autoescape off — the output
is YAML, not HTML — and with ``[[ ]]`` / ``[% %]`` delimiters, so Ansible's own
``{{ }}`` expressions in the templates pass through untouched.

What keeps a parameter from changing the playbook's structure:

* **Validation first.** Every parameter is checked against a strict pattern
  (DNS-1123 names, image references, ports 1-65535, absolute paths of plain
  characters, ...). A bad one raises :class:`TemplateParamError` naming it.
* **Quoted values.** Strings are written as JSON strings (valid YAML
  double-quoted scalars), so no quote, colon, ``#`` or newline can open a new
  key. Keys (``--var KEY=VALUE``) must be snake_case identifiers.
* **No Jinja from the user.** Ansible templates every string it reads, so a
  value containing ``{{``, ``{%`` or ``{#`` is refused rather than escaped.

The playbooks use ``ansible.builtin`` modules only (the ``docker``/``podman``
command line for containers), like the example homelab-infra repo, so they
run on a bare ansible-core; where Docker or systemd is missing they still do
their file work and skip the rest with a message based on what they found.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

import jinja2

__all__ = ["KINDS", "TemplateKind", "TemplateParam", "TemplateParamError", "render", "var_prefix"]


class TemplateParamError(ValueError):
    """A template parameter is missing or invalid; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"--{param.replace('_', '-')}: {message}")
        self.param = param
        self.message = message


# Validators: each takes the raw value (a string from the CLI, or JSON data from the API)
# and returns the clean value, or raises ValueError with a sentence.

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_IMAGE_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"^(?:(?P<registry>[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{{1,5}})?)/)?"
    rf"(?P<path>{_IMAGE_PART}(?:/{_IMAGE_PART})*)"
    rf"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}))?$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ABS_PATH = re.compile(r"^/[A-Za-z0-9._+@/-]*$")
_REL_PATH = re.compile(r"^[A-Za-z0-9._+@-][A-Za-z0-9._+@/-]*$")
_URL_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/%?-]*$")
_HOSTS = re.compile(r"^[A-Za-z0-9_.:*!&,-]{1,200}$")
_TAG_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
_VAR_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,99}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_UNIT = re.compile(r"^[A-Za-z0-9@._:-]{1,200}$")
_MODE = re.compile(r"^0[0-7]{3}$")
_JINJA_MARKERS = ("{{", "{%", "{#", "}}", "%}", "#}")
_RESERVED_VAR_PREFIXES = ("ansible_", "hostvars", "inventory_", "group_names", "groups", "omit", "play_")


def _text(value: Any, *, max_length: int = 200) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected text, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise ValueError("must not be empty")
    if len(text) > max_length:
        raise ValueError(f"is {len(text)} characters long; at most {max_length}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValueError("must be one line without control characters")
    if any(marker in text for marker in _JINJA_MARKERS):
        raise ValueError(
            "must not contain Jinja delimiters ({{ }}, {% %}, {# #}): Ansible would evaluate them"
        )
    return text


def _matching(pattern: re.Pattern[str], what: str, *, max_length: int = 200) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _text(value, max_length=max_length)
        if not pattern.match(text):
            raise ValueError(f"{text!r} is not {what}")
        return text

    return check


def dns_name(value: Any) -> str:
    text = _text(value, max_length=63)
    if not _DNS_LABEL.match(text):
        raise ValueError(
            f"{text!r} is not a DNS-1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return text


def image(value: Any) -> str:
    text = _text(value, max_length=255)
    if not _IMAGE.match(text):
        raise ValueError(f"{text!r} is not an image reference such as gotify/server or ghcr.io/org/app:1.2")
    return text


def port(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a port number")
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise ValueError(f"{value!r} is not a port number") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"{number} is outside 1-65535")
    return number


def bounded_int(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        try:
            number = int(str(value).strip(), 10)
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"{number} is outside {low}-{high}")
        return number

    return check


def absolute_path(value: Any) -> str:
    text = _text(value, max_length=120)
    pure = PurePosixPath(text)
    if not _ABS_PATH.match(text) or ".." in pure.parts or "//" in text or len(text) < 2:
        raise ValueError(f"{text!r} is not an absolute path of letters, digits and ._+@-/ without '..'")
    return text.rstrip("/")


def relative_path(value: Any) -> str:
    text = _text(value, max_length=400)
    if not _REL_PATH.match(text) or ".." in PurePosixPath(text).parts or "//" in text:
        raise ValueError(f"{text!r} is not a relative path of letters, digits and ._+@-/ without '..'")
    return text


def ip_address(value: Any) -> str:
    text = _text(value, max_length=64)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "yes", "1", "on"}:
        return True
    if text in {"false", "no", "0", "off"}:
        return False
    raise ValueError(f"{value!r} is not true or false")


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _text(value, max_length=50)
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return check


def _list_of(item: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def check(value: Any) -> list[Any]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not items:
            raise ValueError("expected a non-empty, comma-separated list")
        return [item(part.strip() if isinstance(part, str) else part) for part in items]

    return check


def command_line(value: Any) -> str:
    text = _text(value, max_length=1000)
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must start with the absolute path of the program (systemd needs one)")
    return text


def validate_command(value: Any) -> str:
    text = _text(value, max_length=500)
    if "%s" not in text:
        raise ValueError(f"{text!r} must contain %s, where Ansible puts the file to check")
    return text


def health_path(value: Any) -> str:
    text = _text(value, max_length=400)
    if not _URL_PATH.match(text):
        raise ValueError(f"{text!r} is not a URL path starting with '/'")
    return text


@dataclass(frozen=True)
class TemplateParam:
    name: str
    help: str
    check: Callable[[Any], Any]
    required: bool = False
    # A default is computed from the other (already valid) parameters; None means "omit".
    default: Callable[[dict[str, Any]], Any] | None = None


@dataclass(frozen=True)
class TemplateKind:
    name: str
    description: str
    template: str
    params: tuple[TemplateParam, ...]
    example: str = ""
    param_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_names", frozenset(p.name for p in self.params))


def _const(value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda _params: value


def _needs_root(path: str) -> bool:
    """Whether writing under ``path`` needs root on a usual Linux host."""
    return not path.startswith(("/home/", "/tmp/", "/var/tmp/", "/mnt/", "/srv/homelab", "{{"))


_HOSTS_PARAM = TemplateParam(
    "hosts",
    "inventory host pattern the play targets",
    _matching(_HOSTS, "a host pattern"),
    default=_const("all"),
)
_TAGS_PARAM = TemplateParam(
    "tags",
    "comma-separated tags of the deploy tasks (default: NAME,deploy)",
    _list_of(_matching(_TAG_NAME, "a tag (lower-case letters, digits, '_' and '-')")),
    default=lambda p: [var_prefix(p["name"]), "deploy"],
)
_NAME_PARAM = TemplateParam("name", "service name (DNS-1123 label)", dns_name, required=True)
_HEALTH_TIMEOUT = TemplateParam(
    "health_timeout", "seconds to wait for the port", bounded_int(1, 3600), default=_const(60)
)
_SERVICE_PARAMS = (
    TemplateParam("image", "container image, optionally with :tag", image, required=True),
    TemplateParam(
        "tag", "image tag (default: the one in --image, else latest)", _matching(_TAG, "an image tag")
    ),
    TemplateParam("port", "port the service listens on inside the container", port, required=True),
    TemplateParam(
        "host_port", "port published on the host (default: --port)", port, default=lambda p: p["port"]
    ),
    TemplateParam(
        "bind_address", "host address the port is published on", ip_address, default=_const("0.0.0.0")
    ),
    TemplateParam("health_path", "URL path of the HTTP health check", health_path, default=_const("/")),
    TemplateParam(
        "health_status",
        "comma-separated HTTP statuses that count as healthy",
        _list_of(bounded_int(100, 599)),
        default=_const([200]),
    ),
    _HEALTH_TIMEOUT,
)

KINDS: dict[str, TemplateKind] = {
    kind.name: kind
    for kind in (
        TemplateKind(
            "compose-service",
            "Deploy a service as a docker compose stack, with a restart handler and an HTTP health check",
            "compose-service.yml.j2",
            (
                _NAME_PARAM,
                *_SERVICE_PARAMS,
                TemplateParam(
                    "stack_dir",
                    "folder of the stack on the host (default: {{ homelab_root }}/stacks/NAME)",
                    absolute_path,
                    default=lambda p: f"{{{{ homelab_root | default('/opt/homelab') }}}}/stacks/{p['name']}",
                ),
                TemplateParam(
                    "data_path",
                    "where the data folder is mounted in the container",
                    absolute_path,
                    default=_const("/data"),
                ),
                TemplateParam("become", "run the play as root", boolean, default=_const(False)),
                _HOSTS_PARAM,
                _TAGS_PARAM,
            ),
            "--name gotify --image gotify/server --port 80 --host-port 8080",
        ),
        TemplateKind(
            "container",
            "Run one container with docker or podman, recreated when its image or environment changes",
            "container.yml.j2",
            (
                _NAME_PARAM,
                *_SERVICE_PARAMS,
                TemplateParam(
                    "engine", "container engine", one_of("docker", "podman"), default=_const("docker")
                ),
                TemplateParam(
                    "restart",
                    "restart policy",
                    one_of("no", "on-failure", "always", "unless-stopped"),
                    default=_const("unless-stopped"),
                ),
                TemplateParam(
                    "config_dir",
                    "folder of the environment file (default: {{ homelab_root }}/containers/NAME)",
                    absolute_path,
                    default=lambda p: (
                        f"{{{{ homelab_root | default('/opt/homelab') }}}}/containers/{p['name']}"
                    ),
                ),
                TemplateParam("become", "run the play as root", boolean, default=_const(False)),
                _HOSTS_PARAM,
                _TAGS_PARAM,
            ),
            "--name whoami --image traefik/whoami --port 80 --host-port 8081",
        ),
        TemplateKind(
            "systemd-service",
            "Run a program as a systemd service: unit file, reload and restart handlers, active check",
            "systemd-service.yml.j2",
            (
                _NAME_PARAM,
                TemplateParam(
                    "exec_start",
                    "command line of the service (absolute program path)",
                    command_line,
                    required=True,
                ),
                TemplateParam(
                    "description",
                    "unit description",
                    lambda v: _text(v, max_length=200),
                    default=lambda p: f"{p['name']} (managed by Ansible)",
                ),
                TemplateParam(
                    "user",
                    "user the service runs as",
                    _matching(_USER, "a user name"),
                    default=_const("root"),
                ),
                TemplateParam("working_directory", "working directory", absolute_path, default=_const("/")),
                TemplateParam(
                    "restart",
                    "systemd Restart= policy",
                    one_of(
                        "no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"
                    ),
                    default=_const("on-failure"),
                ),
                TemplateParam("port", "port to wait for after a start (optional)", port),
                _HEALTH_TIMEOUT,
                TemplateParam(
                    "unit_dir",
                    "folder of the unit file",
                    absolute_path,
                    default=_const("/etc/systemd/system"),
                ),
                TemplateParam(
                    "become",
                    "use root for the unit file and systemctl (default: when unit_dir needs it)",
                    boolean,
                    default=lambda p: _needs_root(p["unit_dir"]),
                ),
                _HOSTS_PARAM,
                _TAGS_PARAM,
            ),
            "--name node-exporter --exec-start /usr/local/bin/node_exporter --port 9100",
        ),
        TemplateKind(
            "config-file",
            "Render a config file from a template, keep a backup, restart a service through a handler",
            "config-file.yml.j2",
            (
                _NAME_PARAM,
                TemplateParam("dest", "absolute path of the file on the host", absolute_path, required=True),
                TemplateParam(
                    "src",
                    "template in the repo, relative to the playbook (default: templates/NAME.j2)",
                    relative_path,
                    default=lambda p: f"templates/{p['name']}.j2",
                ),
                TemplateParam(
                    "service",
                    "service restarted when the file changes (optional)",
                    _matching(_UNIT, "a service name"),
                ),
                TemplateParam("owner", "file owner (optional)", _matching(_USER, "a user name")),
                TemplateParam("group", "file group (optional)", _matching(_USER, "a group name")),
                TemplateParam(
                    "mode",
                    "file mode, four octal digits",
                    _matching(_MODE, "a mode such as 0644"),
                    default=_const("0644"),
                ),
                TemplateParam(
                    "validate",
                    "command that checks the new file, with %s for its path (optional)",
                    validate_command,
                ),
                TemplateParam(
                    "become",
                    "use root for the file and the restart (default: when dest needs it)",
                    boolean,
                    default=lambda p: _needs_root(p["dest"]),
                ),
                _HOSTS_PARAM,
                _TAGS_PARAM,
            ),
            "--name caddy --dest /etc/caddy/Caddyfile --service caddy "
            "--validate 'caddy validate --config %s'",
        ),
    )
}


def var_prefix(name: str) -> str:
    """The playbook's variable prefix: the name in snake_case, never starting with a digit.

    At most 24 characters, so that lines stay under ansible-lint's 160 even for a 63-character name.
    """
    prefix = name.replace("-", "_")
    prefix = f"svc_{prefix}" if prefix[0].isdigit() else prefix
    return prefix[:24].rstrip("_")


def _parse_vars(raw: Any, kind: TemplateKind, prefix: str) -> list[tuple[str, str]]:
    if raw is None:
        return []
    items: Sequence[Any] = list(raw.items()) if isinstance(raw, Mapping) else raw
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise TemplateParamError("var", "expected KEY=VALUE pairs")
    found: dict[str, str] = {}
    for item in items:
        if isinstance(item, str):
            key, sep, value = item.partition("=")
            if not sep:
                raise TemplateParamError("var", f"{item!r} is not KEY=VALUE")
        elif isinstance(item, tuple | list) and len(item) == 2:
            key, value = item
        else:
            raise TemplateParamError("var", f"{item!r} is not KEY=VALUE")
        key = str(key).strip()
        if not _VAR_NAME.match(key):
            raise TemplateParamError(
                "var", f"{key!r} is not a variable name (snake_case letters, digits and '_')"
            )
        if key.startswith(_RESERVED_VAR_PREFIXES) or key == "environment":
            raise TemplateParamError("var", f"{key!r} is reserved by Ansible")
        if key.startswith(prefix + "_"):
            raise TemplateParamError(
                "var",
                f"{key!r} would clash with the playbook's own {prefix}_* variables; use the named options",
            )
        if key in found:
            raise TemplateParamError("var", f"{key!r} is given twice")
        try:
            found[key] = _text(value, max_length=1000) if value != "" else ""
        except ValueError as exc:
            raise TemplateParamError("var", f"{key}: {exc}") from None
    return list(found.items())


def validate(kind_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check every parameter of ``kind_name`` and fill in defaults; raise TemplateParamError."""
    kind = KINDS.get(kind_name)
    if kind is None:
        raise TemplateParamError("kind", f"{kind_name!r} is not a template; choose one of {', '.join(KINDS)}")
    unknown = sorted(set(params) - kind.param_names - {"vars", "filename"})
    if unknown:
        raise TemplateParamError(unknown[0], f"is not a parameter of the {kind_name} template")
    clean: dict[str, Any] = {}
    for param in kind.params:
        raw = params.get(param.name)
        if raw is None or raw == "":
            if param.required:
                raise TemplateParamError(param.name, "is required")
            clean[param.name] = param.default(clean) if param.default is not None else None
            continue
        try:
            clean[param.name] = param.check(raw)
        except ValueError as exc:
            raise TemplateParamError(param.name, str(exc)) from None
    if "image" in clean:
        _split_tag(clean)
    prefix = var_prefix(clean["name"])
    clean["vars"] = _parse_vars(params.get("vars"), kind, prefix)
    clean["tags_health"] = [prefix, "health"]
    filename = params.get("filename") or f"{clean['name']}.yml"
    try:
        clean["filename"] = relative_path(PurePosixPath(str(filename)).name)
    except ValueError as exc:
        raise TemplateParamError("output", str(exc)) from None
    return clean


def _split_tag(clean: dict[str, Any]) -> None:
    match = _IMAGE.match(clean["image"])
    assert match is not None
    embedded = match.group("tag")
    if embedded and clean.get("tag") and clean["tag"] != embedded:
        raise TemplateParamError("tag", f"--image already names tag {embedded!r}; give the tag in one place")
    if embedded:
        clean["image"] = clean["image"][: -(len(embedded) + 1)]
    clean["tag"] = clean.get("tag") or embedded or "latest"


def _quote(value: Any) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML) that no content can break out of."""
    return json.dumps(str(value), ensure_ascii=True)


def _flow(values: Sequence[Any]) -> str:
    return "[" + ", ".join(str(v) if isinstance(v, int) else _quote(v) for v in values) + "]"


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        autoescape=False,  # the output is YAML; values are validated and quoted instead
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        variable_start_string="[[",
        variable_end_string="]]",
        block_start_string="[%",
        block_end_string="%]",
        comment_start_string="[#",
        comment_end_string="#]",
    )
    environment.filters.update(q=_quote, flow=_flow, yamlbool=lambda v: "true" if v else "false")
    return environment


def _load_template(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


_ENVIRONMENT: jinja2.Environment | None = None


def render(kind_name: str, params: Mapping[str, Any]) -> str:
    """The playbook text for ``kind_name`` with ``params``; raises TemplateParamError on a bad one.

    ``params`` keys are the parameter names of :data:`KINDS` (snake_case), plus
    ``vars`` (``["key=value", ...]`` or a mapping) and ``filename`` (named in the comments).
    """
    global _ENVIRONMENT
    clean = validate(kind_name, params)
    if _ENVIRONMENT is None:
        _ENVIRONMENT = _environment()
    template = _ENVIRONMENT.get_template(KINDS[kind_name].template)
    return template.render(p=clean, v=var_prefix(clean["name"]))
