"""JSON Schema for Chiffon's wire formats, generated from the models.

The files committed under ``docs/schema/`` serve editors (a YAML file can start
with ``# yaml-language-server: $schema=.../deploymentintent.json``), other
languages and reviewers. They are never edited by hand: ::

    python -m chiffon.resources.schema --write docs/schema   # regenerate
    python -m chiffon.resources.schema --check docs/schema   # CI: exit 1 when stale

Schemas are the camelCase wire form (``by_alias``) of what the models accept
(``mode="validation"``). :func:`generate_schemas` is pure like the rest of this
package; only the command line at the bottom reads and writes files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chiffon.resources.base import Model
from chiffon.resources.intent import DeploymentIntent
from chiffon.resources.messages import PAYLOAD_TYPES, Envelope

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE = "python -m chiffon.resources.schema --write"


def model_schema(model: type[Model]) -> dict[str, Any]:
    """One model's JSON Schema, camelCase field names, as input to validation."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def generate_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema: the DeploymentIntent, the message envelope and each message payload."""
    schemas = {
        "deploymentintent.json": model_schema(DeploymentIntent),
        "envelope.json": model_schema(Envelope),
    }
    for message_type, payload in PAYLOAD_TYPES.items():
        schemas[f"{message_type.value.lower()}.json"] = model_schema(payload)
    return schemas


def render(schema: dict[str, Any]) -> str:
    """The committed form: sorted keys and two-space indents, so diffs stay small and stable."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale_files(directory: Path) -> list[str]:
    """One sentence per file under ``directory`` that differs from what the models produce."""
    expected = {name: render(schema) for name, schema in generate_schemas().items()}
    regenerate = f"run `{REGENERATE} {directory}`"
    problems = []
    for name, text in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path} is missing; {regenerate}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path} is out of date; {regenerate}")
    for path in sorted(directory.glob("*.json")):
        if path.name not in expected:
            problems.append(f"{path} is not generated from any model; delete it")
    return problems


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in generate_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chiffon.resources.schema", description="JSON Schema files for Chiffon's wire formats"
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="DIR", type=Path, help="write the schema files into DIR")
    action.add_argument("--check", metavar="DIR", type=Path, help="exit 1 if DIR differs from the models")
    args = parser.parse_args(argv)
    if args.write is not None:
        for path in write_schemas(args.write):
            print(f"wrote {path}")
        return 0
    problems = stale_files(args.check)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
