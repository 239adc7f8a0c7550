"""``chiffonctl template``: write a new playbook from a template — local, no server needed.

``template list`` shows the kinds and their parameters; ``template new KIND
--name … [--var KEY=VALUE …] [-o FILE [--force]]`` prints the playbook, or
writes it to FILE (never over an existing file unless ``--force``). One
subcommand per kind is generated from :data:`chiffon.agents.templates.render.KINDS`,
so ``template new compose-service --help`` lists exactly that kind's options.
Exit codes as everywhere in chiffonctl: 0 success, 1 a bad parameter or a
refused overwrite.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from chiffon.agents.templates.render import KINDS, TemplateKind, TemplateParamError, render
from chiffon.api.ctl import app as root_app

app = typer.Typer(help="Write new playbooks from templates (no server needed).", no_args_is_help=True)
new_app = typer.Typer(help="Render a playbook template; see `template list`.", no_args_is_help=True)
app.add_typer(new_app, name="new")


def _fail(message: str) -> typer.Exit:
    sys.stderr.write(f"chiffonctl: error: {message}\n")
    return typer.Exit(1)


@app.command("list")
def list_templates() -> None:
    """The template kinds, their parameters (* = required) and an example."""
    for kind in KINDS.values():
        sys.stdout.write(f"{kind.name}\n  {kind.description}\n")
        for param in kind.params:
            flag = "--" + param.name.replace("_", "-")
            mark = "*" if param.required else " "
            sys.stdout.write(f"   {mark} {flag:<20} {param.help}\n")
        sys.stdout.write("     --var KEY=VALUE      an extra play variable (repeatable)\n")
        if kind.example:
            sys.stdout.write(f"  e.g. chiffonctl template new {kind.name} {kind.example}\n")
        sys.stdout.write("\n")


def write_playbook(text: str, output: Path | None, force: bool) -> None:
    """Print ``text``, or write it to ``output`` — refusing to replace a file unless ``force``."""
    if output is None:
        sys.stdout.write(text)
        return
    if output.is_dir():
        raise _fail(f"{output} is a folder; give the playbook's file name")
    if not output.parent.is_dir():
        raise _fail(f"{output.parent} does not exist")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        descriptor = os.open(output, flags, 0o644)
    except FileExistsError:
        raise _fail(f"{output} exists; pass --force to overwrite it") from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    sys.stderr.write(f"wrote {output}\n")


def _command_for(kind: TemplateKind) -> None:
    def command(**options: Any) -> None:
        output: Path | None = options.pop("output")
        force: bool = options.pop("force")
        variables: list[str] = options.pop("var") or []
        params = {key: value for key, value in options.items() if value is not None}
        params["vars"] = variables
        if output is not None:
            params["filename"] = output.name
        try:
            text = render(kind.name, params)
        except TemplateParamError as exc:
            raise _fail(str(exc)) from None
        write_playbook(text, output, force)

    parameters = [
        inspect.Parameter(
            param.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Option(
                    "--" + param.name.replace("_", "-"),
                    help=param.help + (" [required]" if param.required else ""),
                    show_default=False,
                ),
            ],
        )
        for param in kind.params
    ]
    parameters += [
        inspect.Parameter(
            "var",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                list[str] | None,
                typer.Option("--var", help="extra play variable KEY=VALUE (repeatable)", show_default=False),
            ],
        ),
        inspect.Parameter(
            "output",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option("--output", "-o", help="write to FILE instead of stdout", show_default=False),
            ],
        ),
        inspect.Parameter(
            "force",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option("--force", help="overwrite FILE if it exists")],
        ),
    ]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__doc__ = kind.description + "."
    new_app.command(kind.name)(command)


for _kind in KINDS.values():
    _command_for(_kind)

# Registered on chiffonctl's root, which imports this module at its end.
root_app.add_typer(app, name="template")
