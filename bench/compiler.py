"""The offline compiler on a labelled set: accuracy and latency, no LLM.

    .venv/bin/python -m bench.compiler [--quick] [--repeat N] [--verbose] [--json PATH]

* **Set.** ``bench/data/compiler_requests.yaml``: requests as homelab owners
  type them against the bundled ``examples/homelab-infra``, each labelled
  with the intents a sensible person wants (playbooks in order; limit, vars,
  dependsOn, approval, priority where the request says so), requests that
  nothing in the repo does (must be refused with a DraftError), and changes
  to the example intents of ``examples/intents`` (``modify``).
* **Accuracy** (target ≥ 95 %): an item is right when every intent the
  compiler produced is schema-valid (its wire form read back by
  ``parse_intents``), there are exactly as many as expected, and each names
  exactly the expected playbooks and roles in order and matches whatever
  else the label specifies; a refused item is right when DraftError is
  raised. Scored on the first pass; a later pass that scores differently is
  reported as nondeterminism.
* **Latency** (target p50 ≤ 100 ms): ``Compiler.compile`` timed around each
  call, the catalog warmed first (``Catalog.warm()``, the model loaded) and
  the very first call left out. The target is checked on the first pass:
  every request there is new to the catalog, as a person's next request is.
  The whole set runs ``--repeat`` times (5; 1 with ``--quick``); from the
  second pass on the catalog's per-query answer cache hits, so the figures
  over all passes are reported beside it but say little.

Results go to ``bench/results/compiler-latest.json`` (or ``--json``). Exit
status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from ruamel.yaml import YAML  # noqa: E402

from chiffon.agents.compiler.draft import DraftError  # noqa: E402
from chiffon.resources import DeploymentIntent  # noqa: E402
from chiffon.resources.yamlio import dump_yaml, parse_intents  # noqa: E402

if TYPE_CHECKING:
    from chiffon.agents.compiler.compiler import Compiler

DATA = ROOT / "bench" / "data" / "compiler_requests.yaml"
EXAMPLE = ROOT / "examples" / "homelab-infra"
INVENTORY = EXAMPLE / "ansible" / "inventory" / "hosts.yml"
EXAMPLE_INTENTS = ROOT / "examples" / "intents"
RESULTS = ROOT / "bench" / "results" / "compiler-latest.json"
PLAYBOOK_DIR = "ansible/playbooks"
DEFAULT_LIMIT = "localhost"
TARGETS = {"accuracy": 0.95, "p50_ms": 100.0}
_HOST_SPLIT = re.compile(r"[:,]")
_EXPECT_KEYS = {"playbooks", "limit", "vars", "dependsOn", "approval", "priority", "name"}


# The set ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    request: str
    expect: Mapping[str, Any]
    modify: str | None = None
    with_examples: bool = False

    @property
    def refused(self) -> bool:
        return bool(self.expect.get("refused"))

    def expected_text(self) -> str:
        if self.refused:
            return "refused"
        return "; ".join(_expected_intent_text(e) for e in self.expect["intents"])


def load_items(path: Path = DATA) -> list[Item]:
    """The labelled set; a malformed item is a ValueError naming it."""
    data = YAML(typ="safe").load(path.read_text())
    items: list[Item] = []
    for index, raw in enumerate(data["items"]):
        where = f"{path.name} item {index + 1} ({raw.get('request')!r})"
        expect = raw.get("expect") or {}
        if not isinstance(raw.get("request"), str) or not raw["request"].strip():
            raise ValueError(f"{where}: no request")
        if bool(expect.get("refused")) == bool(expect.get("intents")):
            raise ValueError(f"{where}: expect needs either refused: true or a list of intents")
        for wanted in expect.get("intents") or []:
            unknown = set(wanted) - _EXPECT_KEYS
            if unknown or not wanted.get("playbooks"):
                raise ValueError(
                    f"{where}: an expected intent needs playbooks (unknown keys {sorted(unknown)})"
                )
        existing = raw.get("existing")
        if existing not in (None, "examples"):
            raise ValueError(f"{where}: existing is 'examples' or absent")
        modify = raw.get("modify")
        items.append(
            Item(raw["request"], expect, modify, with_examples=existing == "examples" or bool(modify))
        )
    return items


def example_intents(directory: Path = EXAMPLE_INTENTS) -> dict[str, DeploymentIntent]:
    """The intents of ``examples/intents``, by name (what modify items change)."""
    found: dict[str, DeploymentIntent] = {}
    for path in sorted(directory.glob("*.yaml")):
        parsed = parse_intents(path.read_text(), str(path))
        if parsed.errors:
            raise ValueError(f"{path}: {parsed.errors[0]}")
        for one in parsed.intents:
            found[one.intent.metadata.name] = one.intent
    return found


# Running and scoring ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one compile call gave: the changes, or the DraftError's problems, or another exception."""

    seconds: float
    changes: list[tuple[str, DeploymentIntent]] = field(default_factory=list)
    refused: list[str] | None = None
    crashed: str | None = None

    def text(self) -> str:
        if self.crashed is not None:
            return f"crashed: {self.crashed}"
        if self.refused is not None:
            return "refused: " + "; ".join(self.refused)
        return "; ".join(f"{action} {_intent_text(intent)}" for action, intent in self.changes) or "nothing"


@dataclass(frozen=True)
class Verdict:
    item: Item
    ok: bool
    why: list[str]
    got: str


async def compile_item(compiler: Compiler, item: Item, examples: Mapping[str, DeploymentIntent]) -> Outcome:
    existing = dict(examples) if item.with_examples else {}
    started = time.perf_counter()
    try:
        compilation = await compiler.compile(item.request, existing=existing, modify=item.modify)
    except DraftError as error:
        return Outcome(time.perf_counter() - started, refused=list(error.problems))
    except Exception as error:  # a crash is a miss, not the end of the run
        return Outcome(time.perf_counter() - started, crashed=f"{type(error).__name__}: {error}")
    seconds = time.perf_counter() - started
    return Outcome(seconds, changes=[(change.action, change.intent) for change in compilation.changes])


def score(item: Item, outcome: Outcome) -> Verdict:
    """Whether ``outcome`` is what the item's label asks for, and why not."""
    got = outcome.text()
    if outcome.crashed is not None:
        return Verdict(item, False, ["the compiler raised something other than DraftError"], got)
    if item.refused:
        why = [] if outcome.refused is not None else ["expected a refusal (DraftError)"]
        return Verdict(item, not why, why, got)
    if outcome.refused is not None:
        return Verdict(item, False, ["refused a request the repo can do"], got)
    expected: list[Mapping[str, Any]] = list(item.expect["intents"])
    why: list[str] = []
    for action, intent in outcome.changes:
        why += [f"{intent.metadata.name}: not schema-valid: {p}" for p in schema_problems(intent)]
        wanted_action = "modify" if item.modify else "create"
        if action != wanted_action:
            why.append(f"{intent.metadata.name}: action {action}, expected {wanted_action}")
    if len(outcome.changes) != len(expected):
        why.append(f"{len(outcome.changes)} intent(s), expected {len(expected)}")
        return Verdict(item, False, why, got)
    intents = [intent for _, intent in outcome.changes]
    labels = {str(e["name"]): i for i, e in enumerate(expected) if "name" in e}
    for index, (wanted, intent) in enumerate(zip(expected, intents, strict=True)):
        why += [
            f"intent {index + 1}: {p}" for p in intent_problems(wanted, intent, intents, labels, item.modify)
        ]
    return Verdict(item, not why, why, got)


def schema_problems(intent: DeploymentIntent) -> list[str]:
    """The intent's wire form, written as YAML and read back as a file would be; its errors."""
    parsed = parse_intents(dump_yaml(intent.to_wire()), f"{intent.metadata.name}.yaml")
    problems = [str(error) for error in parsed.errors]
    if not problems and len(parsed.intents) != 1:
        problems.append(f"read back {len(parsed.intents)} intents")
    return problems


def intent_problems(
    wanted: Mapping[str, Any],
    intent: DeploymentIntent,
    intents: Sequence[DeploymentIntent],
    labels: Mapping[str, int],
    modify: str | None,
) -> list[str]:
    spec = intent.spec
    problems: list[str] = []
    steps = [step_label(step) for step in spec.steps]
    if steps != list(wanted["playbooks"]):
        problems.append(f"steps {steps}, expected {list(wanted['playbooks'])}")
    if modify and intent.metadata.name != modify:
        problems.append(f"named {intent.metadata.name!r}, expected the modified intent's name {modify!r}")
    if "limit" in wanted:
        choices = wanted["limit"] if isinstance(wanted["limit"], list) else [wanted["limit"]]
        if hosts(spec.limit) not in [hosts(choice) for choice in choices]:
            problems.append(f"limit {spec.limit!r}, expected {' or '.join(repr(c) for c in choices)}")
    if "vars" in wanted:
        merged: dict[str, Any] = dict(spec.vars)
        for step in spec.steps:
            merged.update(step.vars)
        for name, value in wanted["vars"].items():
            if name not in merged or not contains(merged[name], value):
                problems.append(f"vars.{name} = {merged.get(name, '(unset)')!r}, expected {value!r}")
    if "dependsOn" in wanted:
        expected_deps = sorted(
            intents[labels[dep]].metadata.name if dep in labels and not modify else str(dep)
            for dep in wanted["dependsOn"]
        )
        if sorted(spec.depends_on) != expected_deps:
            problems.append(f"dependsOn {list(spec.depends_on)}, expected {expected_deps}")
    for key, actual in (("approval", spec.approval.value), ("priority", spec.priority.value)):
        if key in wanted and actual != wanted[key]:
            problems.append(f"{key} {actual}, expected {wanted[key]}")
    return problems


def step_label(step: Any) -> str:
    """``kuma-deployment.yml`` for a playbook of ansible/playbooks, ``role:common``, else the path or goal."""
    if step.playbook:
        path = PurePosixPath(step.playbook)
        return path.name if str(path.parent) == PLAYBOOK_DIR else str(path)
    if step.role:
        return f"role:{step.role}"
    return f"goal:{step.goal}"


def hosts(pattern: str | None) -> frozenset[str] | None:
    """The hosts a pattern selects in the example inventory: ``infra`` is ``unraid:nas`` is ``nas,unraid``.

    Names the inventory does not know are kept as they are; ``None`` (no limit) stays ``None``.
    """
    if pattern is None:
        return None
    groups = inventory_groups()
    selected: set[str] = set()
    for part in (p.strip() for p in _HOST_SPLIT.split(pattern)):
        if part:
            selected |= groups.get(part, {part})
    return frozenset(selected)


@functools.cache
def inventory_groups(path: Path = INVENTORY) -> dict[str, frozenset[str]]:
    """Group name -> its hosts (children included) in a YAML inventory; ``all`` -> every host."""
    groups: dict[str, frozenset[str]] = {}

    def walk(name: str, node: Any) -> frozenset[str]:
        node = node or {}
        members = set(node.get("hosts") or {})
        for child, child_node in (node.get("children") or {}).items():
            members |= walk(child, child_node)
        groups[name] = frozenset(members)
        return groups[name]

    data = YAML(typ="safe").load(path.read_text()) or {}
    for name, node in data.items():
        walk(name, node)
    return groups


def contains(actual: Any, wanted: Any) -> bool:
    """``wanted`` is in ``actual``: scalars as text, lists as a subset, maps recursively."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and contains(actual[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return isinstance(actual, list) and all(any(contains(a, w) for a in actual) for w in wanted)
    return not isinstance(actual, Mapping | list) and str(actual) == str(wanted)


def accuracy(verdicts: Sequence[Verdict]) -> float:
    return sum(v.ok for v in verdicts) / len(verdicts) if verdicts else 0.0


def format_misses(verdicts: Sequence[Verdict]) -> str:
    """One block per miss: the request, what was expected, what came back, why."""
    lines: list[str] = []
    for verdict in verdicts:
        if verdict.ok:
            continue
        modify = f" (modify {verdict.item.modify})" if verdict.item.modify else ""
        lines += [
            f"✗ {verdict.item.request!r}{modify}",
            f"    expected: {verdict.item.expected_text()}",
            f"    got:      {verdict.got}",
            *(f"    - {why}" for why in verdict.why),
        ]
    return "\n".join(lines)


async def score_set(
    compiler: Compiler, items: Sequence[Item], examples: Mapping[str, DeploymentIntent]
) -> tuple[list[Verdict], list[float]]:
    """Every item once, in order: the verdicts and each call's seconds."""
    verdicts: list[Verdict] = []
    seconds: list[float] = []
    for item in items:
        outcome = await compile_item(compiler, item, examples)
        seconds.append(outcome.seconds)
        verdicts.append(score(item, outcome))
    return verdicts, seconds


def _intent_text(intent: DeploymentIntent) -> str:
    spec = intent.spec
    parts = [f"{intent.metadata.name} [{', '.join(step_label(s) for s in spec.steps)}]"]
    parts.append(f"limit={spec.limit}")
    merged = dict(spec.vars)
    for step in spec.steps:
        merged.update(step.vars)
    if merged:
        parts.append(f"vars={json.dumps(merged, separators=(',', ':'))}")
    if spec.depends_on:
        parts.append(f"dependsOn={list(spec.depends_on)}")
    parts.append(f"approval={spec.approval.value}")
    if spec.priority.value != "Normal":
        parts.append(f"priority={spec.priority.value}")
    return " ".join(parts)


def _expected_intent_text(wanted: Mapping[str, Any]) -> str:
    parts = [f"[{', '.join(wanted['playbooks'])}]"]
    for key in ("limit", "vars", "dependsOn", "approval", "priority"):
        if key in wanted:
            value = wanted[key]
            parts.append(f"{key}={json.dumps(value, separators=(',', ':')) if key == 'vars' else value}")
    return " ".join(parts)


# The run ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.common import percentile
    from chiffon.agents.catalog.index import catalog_for
    from chiffon.agents.compiler.compiler import Compiler

    items = load_items(args.data)
    examples = example_intents()
    with tempfile.TemporaryDirectory(prefix="chiffon-bench-compiler-") as scratch:
        started = time.perf_counter()
        catalog = catalog_for(EXAMPLE, Path(scratch) / "cache")
        catalog.warm()
        catalog.embedder.encode(["load the model"])
        warmed = time.perf_counter() - started
        print(f"catalog warm: {warmed:.1f} s ({len(catalog.entries())} entries)", flush=True)
        compiler = Compiler(catalog, default_limit=DEFAULT_LIMIT)
        passes: list[list[Verdict]] = []
        timings: list[list[float]] = []
        for _ in range(args.repeat):
            verdicts, seconds = await score_set(compiler, items, examples)
            passes.append(verdicts)
            timings.append(seconds)
    first = passes[0]
    unstable = [items[i].request for i in range(len(items)) if len({p[i].got for p in passes}) > 1]
    all_ms = [s * 1000 for pass_ in timings for s in pass_][1:]  # the very first call is warm-up
    first_ms = [s * 1000 for s in timings[0]][1:]
    slowest = sorted(zip(timings[0][1:], (i.request for i in items[1:]), strict=True), reverse=True)[:5]

    def latency(values: list[float]) -> dict[str, float]:
        return {
            "count": len(values),
            "p50_ms": percentile(values, 50),
            "p95_ms": percentile(values, 95),
            "max_ms": max(values, default=float("nan")),
        }

    refused_items = [v for v in first if v.item.refused]
    other_items = [v for v in first if not v.item.refused]
    figures = {"accuracy": accuracy(first), "p50_ms": latency(first_ms)["p50_ms"]}
    return {
        "set": {
            "path": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
            "items": len(items),
            "refused": len(refused_items),
            "modify": sum(1 for i in items if i.modify),
        },
        "catalog_warm_s": warmed,
        "accuracy": {
            "all": accuracy(first),
            "right": sum(v.ok for v in first),
            "intents": accuracy(other_items),
            "refusals": accuracy(refused_items),
            "unstable_between_passes": unstable,
        },
        "latency": {
            "repeat": args.repeat,
            "all_passes": latency(all_ms),
            "first_pass": latency(first_ms),
            "first_pass_ms": [round(ms, 2) for ms in first_ms],
        },
        "slowest_first_pass": [{"request": r, "ms": s * 1000} for s, r in slowest],
        "misses": [
            {
                "request": v.item.request,
                "modify": v.item.modify,
                "expected": v.item.expected_text(),
                "got": v.got,
                "why": v.why,
            }
            for v in first
            if not v.ok
        ],
        "verdicts": [{"request": v.item.request, "ok": v.ok, "got": v.got} for v in first],
        "targets": {
            "accuracy": {
                "figure": figures["accuracy"],
                "target": TARGETS["accuracy"],
                "met": figures["accuracy"] >= TARGETS["accuracy"],
            },
            "p50_ms": {
                "figure": figures["p50_ms"],
                "target": TARGETS["p50_ms"],
                "met": figures["p50_ms"] <= TARGETS["p50_ms"],
            },
        },
        "_first": first,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one pass over the set (a smoke test)")
    parser.add_argument(
        "--repeat", type=int, default=None, help="passes over the set (default 5; 1 with --quick)"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="print every item's verdict")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.repeat = max(1, args.repeat or (1 if args.quick else 5))
    from bench.common import Timing, where_written, write_results

    timing = Timing()
    results = asyncio.run(run(args))
    first: list[Verdict] = results.pop("_first")
    document = write_results(args.json, timing, quick=args.quick, **results)

    if args.verbose:
        for verdict in first:
            print(f"{'✓' if verdict.ok else '✗'} {verdict.item.request!r} -> {verdict.got}")
    misses = format_misses(first)
    if misses:
        print(f"\nmisses ({sum(not v.ok for v in first)}):\n{misses}\n")
    s, a, lat = results["set"], results["accuracy"], results["latency"]
    print(
        f"set: {s['items']} requests ({s['refused']} to refuse, {s['modify']} changes to example intents)\n"
        f"accuracy: {a['right']}/{s['items']} = {a['all']:.1%} (target ≥ {TARGETS['accuracy']:.0%}); "
        f"requests to compile {a['intents']:.1%}, requests to refuse {a['refusals']:.1%}"
    )
    if a["unstable_between_passes"]:
        print(f"NONDETERMINISTIC between passes: {a['unstable_between_passes']}")
    for name, row in (("first pass", lat["first_pass"]), ("all passes", lat["all_passes"])):
        print(
            f"latency, {name} ({row['count']} calls after the first): p50 {row['p50_ms']:.1f} ms, "
            f"p95 {row['p95_ms']:.1f} ms, max {row['max_ms']:.1f} ms"
            + (f" (target p50 ≤ {TARGETS['p50_ms']:g} ms)" if name == "first pass" else "")
        )
    print(
        "slowest (first pass): "
        + ", ".join(f"{r['ms']:.0f} ms {r['request']!r}" for r in results["slowest_first_pass"])
    )
    for key, row in results["targets"].items():
        sign = "≥" if key == "accuracy" else "≤"
        verdict = "met" if row["met"] else "MISSED"
        print(f"{key}: {row['figure']:.3g} (target {sign} {row['target']:g}) {verdict}")
    print(where_written(document, args.json))
    return 0 if all(row["met"] for row in results["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
