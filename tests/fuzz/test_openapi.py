"""Fuzzing the REST API against its own OpenAPI document with schemathesis.

Every operation under ``/api/v1`` gets schema-valid requests (positive),
schema-invalid ones (negative) and, where it has path parameters, requests
naming things that exist (the example intents, a finished run, an agent), so
the 200 answers are checked too. Each answer must:

* never be a server error (5xx);
* have a documented status code, content type and headers, and a body that
  matches the documented schema for that status;
* refuse a schema-invalid request with a 4xx (``negative_data_rejection``).

It runs twice: on an open local server (no token configured, every call acts
as ``local`` with the admin role, docs/auth.md) and on one with an admin token
(``CHIFFON_API_TOKEN``), each call carrying it.

The app runs in-process through schemathesis' ASGI transport (no socket) on a
temporary SQLite store, a real intents repo and a copy of the example
homelab-infra. It is built inside schemathesis' event loop, on the ASGI
lifespan startup, because the store's connections belong to the loop that
opened them; the lifespan shutdown closes it.

Not checked: ``positive_data_acceptance``. A request can match the schema and
still be refused for what the schema cannot say — YAML inside a string, a
label selector's grammar, a duration such as ``30d`` — and 422 is the
documented answer to that.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chiffon.api.app import create_app
from chiffon.api.context import ServerContext
from chiffon.controllers.intents_writer import IntentsWriter, SubmittedFile
from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitRepo, Identity
from chiffon.resources import Agent, AgentKind, Capacity, Run, RunStatus
from chiffon.resources.messages import AnsibleEvent
from chiffon.settings import Settings
from chiffon.store import Store
from tests.fuzz import harness
from tests.fuzz.harness import trial

FUZZ_TARGET = "openapi"

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_INFRA = ROOT / "examples" / "homelab-infra"
EXAMPLE_INTENTS = sorted((ROOT / "examples" / "intents").glob("*.yaml"))
TOKEN = "chf_" + "fuzz" * 10 + "fuz"  # the shape of a real token: chf_ and 43 characters
AUTH_HEADERS: dict[str, dict[str, str]] = {
    "open": {},
    "admin-token": {"Authorization": f"Bearer {TOKEN}"},
}
SEED_RUN = "uptime-kuma-00000000fuzz0001"
SEED_AGENT = "infra-fuzz-1"

# One request may do real work (a git commit, a catalog search); a hang is a failure.
CALL_TIMEOUT_S = 30.0
DEADLINE_MS = 30_000
# The first request builds the app: a git repo, the seed, and the catalog's model and embeddings.
BUILD_TIMEOUT_S = 600

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

# Operations left out, each with the reason. Nothing else is skipped.
EXCLUDED: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/suggestions/scan"): (
        "takes no parameters and no body, so there is nothing to generate; each call runs ansible-lint "
        "over homelab-infra (20 s and more); tests/integration/test_suggestion_scanner.py covers it"
    ),
}

# Operations whose documentation is known to be wrong: their answers are still checked for
# server errors, content type and headers, and schema-invalid requests must still be
# refused, but status codes and bodies are not held to the document. Empty: every
# operation passes all of CHECKS; add one here only with the reason.
KNOWN_UNDOCUMENTED: dict[tuple[str, str], str] = {}
RELAXED_CHECKS = [
    not_a_server_error,
    content_type_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


def _settings(root: Path, mode: str) -> Settings:
    return Settings(
        home=root,
        infra_repo=root / "homelab-infra",
        catalog_cache_dir=root / "catalog-cache",
        api_token=SecretStr(TOKEN) if mode == "admin-token" else None,
        # The fuzzer is one caller sending as fast as it can; the chat's rate limit is not under test.
        chat_rate_per_minute=1_000_000.0,
        chat_rate_burst=1_000_000,
    )


async def _seed(store: Store, writer: IntentsWriter) -> None:
    """The example intents (through git, as a person applies them), a finished run, an agent."""
    files = [SubmittedFile(path.name, path.read_bytes()) for path in EXAMPLE_INTENTS]
    await writer.apply(files, Identity("Fuzz Seeder", "fuzz@example.com"))
    now = datetime.now(UTC)
    run = Run(
        id=SEED_RUN,
        intent="uptime-kuma",
        generation=1,
        plan_digest="f" * 64,
        step="deploy",
        step_index=0,
        agent_id=SEED_AGENT,
        status=RunStatus.FAILED,
        rc=2,
        error="the fuzzer's seed run",
        created_at=now - timedelta(minutes=2),
        started_at=now - timedelta(minutes=1),
        finished_at=now,
    )
    await store.upsert_run(run)
    event = AnsibleEvent(seq=0, event="runner_on_failed", task="deploy", host="localhost", status="failed")
    await store.append_run_events(SEED_RUN, [event])
    capacity = Capacity(cpu_load_percent=5, cpu_cores=4, memory_total_mib=8192, memory_available_mib=4096)
    await store.upsert_agent(
        Agent(id=SEED_AGENT, kind=AgentKind.INFRA, online=True, last_seen=now, capacity=capacity)
    )


CLOSE_PATH = "/__fuzz__/close"


@dataclass
class LazyApp:
    """The ASGI app, built on its first request inside the loop that serves it.

    schemathesis serves every application from one event loop thread; the
    store's connections belong to the loop that opened them, so the app is
    built there. Its lifespan is a no-op: schemathesis' pytest plugin ends every
    lifespan after each test, and the app must live for the whole module. A
    request to ``CLOSE_PATH`` closes the store, in the same loop.
    """

    build: Callable[[], Awaitable[tuple[FastAPI, Callable[[], Awaitable[None]]]]]
    app: FastAPI | None = None
    close: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == CLOSE_PATH:
            if self.close is not None:
                await self.close()
            self.app = self.close = None
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if self.app is None:
            self.app, self.close = await self.build()
        await self.app(scope, receive, send)


def _builder(root: Path, mode: str) -> Callable[[], Awaitable[tuple[FastAPI, Callable[[], Awaitable[None]]]]]:
    async def build() -> tuple[FastAPI, Callable[[], Awaitable[None]]]:
        shutil.copytree(EXAMPLE_INFRA, root / "homelab-infra")
        repo = await GitRepo.init(root / "intents", initial_files={"README.md": b"# intents\n"})
        store = Store.from_url(f"sqlite+aiosqlite:///{root / 'chiffon.db'}")
        await store.migrate()
        source = GitSource(SourceConfig(location=str(repo.path), checkout_dir=root / "checkout"), store)
        await source.open()
        writer = IntentsWriter(source)
        await _seed(store, writer)
        settings = _settings(root, mode)
        # Load the model and embed the example once now, so the first catalog search is not 20 s.
        from chiffon.agents.catalog.index import catalog_from_settings

        await asyncio.to_thread(catalog_from_settings(settings).search, "uptime monitoring", 1)
        return create_app(ServerContext(settings, store, source, writer)), store.close

    return build


@dataclass
class Api:
    schema: Any
    known: dict[str, list[Any]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Api]]:
    apps = {mode: LazyApp(_builder(tmp_path_factory.mktemp(f"api-{mode}"), mode)) for mode in AUTH_HEADERS}
    known = {"name": [path.stem for path in EXAMPLE_INTENTS], "run_id": [SEED_RUN], "agent_id": [SEED_AGENT]}
    try:
        yield {
            mode: Api(schemathesis.openapi.from_asgi("/openapi.json", app, timeout=BUILD_TIMEOUT_S), known)
            for mode, app in apps.items()
        }
    finally:
        for app in apps.values():
            with asgi.get_client(app) as client:
                client.get(CLOSE_PATH)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    path_parameters: tuple[str, ...]
    takes_input: bool  # parameters or a body: something a negative case can get wrong


def _operations() -> list[Operation]:
    """Every operation in the OpenAPI document, read from an app that is never served."""
    stub = ServerContext(_settings(Path("/nonexistent"), "open"), None, None, None)  # type: ignore[arg-type]
    spec = create_app(stub).openapi()
    found = []
    for path, item in spec["paths"].items():
        for method, definition in item.items():
            parameters = definition.get("parameters", [])
            in_path = tuple(p["name"] for p in parameters if p["in"] == "path")
            found.append(
                Operation(method.upper(), path, in_path, bool(parameters or "requestBody" in definition))
            )
    return found


OPERATIONS = _operations()


def _strategy(operation: Any, described: Operation, known: dict[str, list[Any]]) -> st.SearchStrategy[Any]:
    """Positive and negative cases, and positive ones naming things that exist."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    if described.takes_input:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    names = described.path_parameters
    if names and all(name in known for name in names):
        fixed = st.fixed_dictionaries({name: st.sampled_from(known[name]) for name in names})
        strategies.append(fixed.flatmap(lambda values: operation.as_strategy(path_parameters=values)))
    return st.one_of(strategies)


def _status_note(status: int) -> str:
    return f"answers {status // 100}xx"


@pytest.mark.parametrize("mode", list(AUTH_HEADERS))
@pytest.mark.parametrize("described", OPERATIONS, ids=[f"{o.method} {o.path}" for o in OPERATIONS])
def test_operation(apis: dict[str, Api], mode: str, described: Operation) -> None:
    method, path = described.method, described.path
    if (method, path) in EXCLUDED:
        pytest.skip(EXCLUDED[(method, path)])
    api = apis[mode]
    operation = api.schema[path][method.lower()]
    checks = RELAXED_CHECKS if (method, path) in KNOWN_UNDOCUMENTED else CHECKS
    headers = AUTH_HEADERS[mode]

    @given(case=_strategy(operation, described, api.known))
    @settings(
        max_examples=harness.api_examples(),
        deadline=DEADLINE_MS,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    def fuzz(case: Any) -> None:
        with trial(FUZZ_TARGET, limit_seconds=CALL_TIMEOUT_S * 2) as outcome:
            response = case.call(headers=headers, timeout=CALL_TIMEOUT_S)
            outcome.note = _status_note(response.status_code)
            if response.status_code >= 500:
                outcome.note = "server errors"
            case.validate_response(response, checks=checks, headers=headers)
            outcome.accepted = response.status_code < 400

    fuzz()
    tally = harness.TALLIES.setdefault(FUZZ_TARGET, harness.Tally())
    tally.notes[f"operations tested ({mode})"] = tally.notes.get(f"operations tested ({mode})", 0) + 1
