"""The committed JSON Schema files are exactly what the models produce."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chiffon.resources.messages import MessageType
from chiffon.resources.schema import generate_schemas, main, render, stale_files

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"


def test_committed_schemas_match_the_models() -> None:
    assert stale_files(SCHEMA_DIR) == [], "run: python -m chiffon.resources.schema --write docs/schema"
    for name, schema in generate_schemas().items():
        assert json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8")) == schema


def test_one_file_per_wire_format() -> None:
    names = set(generate_schemas())
    assert {"deploymentintent.json", "envelope.json"} <= names
    assert {f"{kind.value.lower()}.json" for kind in MessageType} <= names


def test_intent_schema_is_the_camel_case_wire_form() -> None:
    schema = generate_schemas()["deploymentintent.json"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    spec = schema["$defs"]["DeploymentIntentSpec"]
    assert {"driftDetection", "dependsOn"} <= set(spec["properties"])
    assert spec["additionalProperties"] is False
    assert "gpuMemoryMiB" in schema["$defs"]["ResourceRequirements"]["properties"]


def test_render_is_stable() -> None:
    text = render({"b": 1, "a": {"d": 2, "c": 3}})
    assert text == '{\n  "a": {\n    "c": 3,\n    "d": 2\n  },\n  "b": 1\n}\n'


def test_check_names_the_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--write", str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0

    (tmp_path / "envelope.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "heartbeat.json").unlink()
    (tmp_path / "old.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["--check", str(tmp_path)]) == 1

    err = capsys.readouterr().err
    assert f"{tmp_path / 'envelope.json'} is out of date" in err
    assert f"{tmp_path / 'heartbeat.json'} is missing" in err
    assert f"{tmp_path / 'old.json'} is not generated from any model" in err
    assert "--write" in err
