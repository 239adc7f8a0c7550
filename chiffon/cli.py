"""``chiffon``: the server commands. This module is the composition root.

``chiffon up`` is the embedded default: API, controllers, an infra agent and
a desktop agent in one process, with SQLite, the in-process bus and a state
directory it creates. ``chiffon api`` / ``chiffon controller`` /
``chiffon agent infra|desktop`` run the same parts separately against
PostgreSQL and RabbitMQ for the distributed mode.

Each command imports what it runs, when it runs: a desktop agent that sits on
a gaming PC all day should not carry FastAPI, SQLAlchemy and the controllers
in its memory (``bench/agents.py`` measures its idle footprint). So the
product's heavier modules are imported inside the functions that use them,
and at the top only for type checking.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from chiffon.settings import Settings

if TYPE_CHECKING:
    from chiffon.agents.desktop import DesktopAgent
    from chiffon.agents.infra import InfraAgent
    from chiffon.api.context import ServerContext
    from chiffon.bus import Bus
    from chiffon.controllers.manager import NamedLoop
    from chiffon.controllers.source import GitSource
    from chiffon.gitsign import CommitSigner, VerifyConfig
    from chiffon.store import Store

log = logging.getLogger("chiffon")

app = typer.Typer(
    name="chiffon",
    help="Chiffon servers: `chiffon up` runs everything in one process on this machine.",
    no_args_is_help=True,
    add_completion=False,
)

INTENTS_README = b"""# Intents

Chiffon reads every `*.yaml` file in this repository as DeploymentIntent resources.
Commit a change here (or run `chiffonctl apply -f FILE`) and Chiffon picks it up;
uncommitted edits are not applied.
"""
AUDIT_README = b"# Audit\n\nOne JSON document per run or decision, written by Chiffon.\n"


class StartupError(RuntimeError):
    """A problem a person must fix before Chiffon can start; printed as one line."""


# The other errors a person can fix, by module: printed as one line too (see `_reported`).
FIXABLE_ERRORS = (
    ("chiffon.store.errors", "StoreError"),
    ("chiffon.gitrepo", "GitError"),
    ("chiffon.bus.base", "BusError"),
)


def is_fixable(error: BaseException) -> bool:
    """Whether ``error`` is one a person can fix (a bad setting, a server down), not a bug.

    Looked up among the modules already imported: the modules are imported
    lazily, and an error of a module never imported cannot have been raised.
    """
    kinds: list[type[BaseException]] = [StartupError]
    for module_name, class_name in FIXABLE_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None:
            kinds.append(getattr(module, class_name))
    return isinstance(error, tuple(kinds))


# Locations ---------------------------------------------------------------------------------


def bundled_examples() -> Path:
    """The examples folder: beside the package in a checkout, or inside the installed package."""
    checkout = Path(__file__).resolve().parent.parent / "examples"
    if (checkout / "homelab-infra").is_dir():
        return checkout
    # Installed with `pip install .`: examples/ is data inside the (namespace) package chiffon.examples.
    spec = importlib.util.find_spec("chiffon.examples")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "homelab-infra").is_dir():
            return Path(location)
    raise StartupError("the bundled examples are missing from this installation; pass --infra-repo PATH")


async def prepare_infra_repo(settings: Settings) -> Path:
    """Use the configured homelab-infra repo, or a git copy of the bundled example."""
    from chiffon.gitrepo import GitRepo

    path = settings.resolved_infra_repo
    if settings.infra_repo is not None:
        if not path.is_dir():
            raise StartupError(f"--infra-repo {path} is not a folder")
        return path
    if not path.exists():
        shutil.copytree(
            bundled_examples() / "homelab-infra",
            path,
            ignore=shutil.ignore_patterns(".git", "__pycache__", ".ansible", "*.retry"),
        )
    if not (path / ".git").exists():
        # Every file in the first commit: suggestions, history and drift read the committed tree.
        files = {
            str(file.relative_to(path)): file.read_bytes()
            for file in sorted(path.rglob("*"))
            if file.is_file() and ".git" not in file.relative_to(path).parts
        }
        await GitRepo.init(path, initial_files=files, message="Import the example homelab-infra repo")
    return path


async def prepare_git_repos(settings: Settings) -> None:
    from chiffon.gitrepo import GitRepo, is_remote_url

    intents = settings.resolved_intents_repo
    if not is_remote_url(intents):
        path = Path(intents)
        if settings.intents_repo is not None and not (path / ".git").exists():
            raise StartupError(f"intents repo {path} is not a git repository (run `git init` there)")
        # With verified commits, the new repo's first commit is signed too (else the source refuses it).
        signer = await open_signer(settings) if not (path / ".git").exists() else None
        try:
            await GitRepo.init(
                path,
                initial_files={"README.md": INTENTS_README},
                message="Create the intents repo",
                sign=signer.options if signer is not None else None,
            )
        finally:
            if signer is not None:
                signer.close()
    await GitRepo.init(
        settings.resolved_audit_repo,
        initial_files={"README.md": AUDIT_README},
        message="Create the audit repo",
    )


async def open_store(settings: Settings, *, wait: bool = False) -> Store:
    from chiffon.store import Store, StoreError

    store = Store.from_url(settings.resolved_database_url)
    await until_available("the database", store.migrate, wait=wait, errors=(StoreError,))
    return store


async def until_available(
    what: str,
    connect: Callable[[], Awaitable[None]],
    *,
    wait: bool,
    errors: tuple[type[Exception], ...],
) -> None:
    """Connect once, or (for long-running services) keep retrying with backoff: no crash loop on an outage.

    ``errors`` are the exceptions that mean "unavailable" (StoreError, BusError).
    """
    delay = 1.0
    while True:
        try:
            await connect()
            return
        except errors as exc:
            if not wait:
                raise
            log.warning("%s is unavailable (%s); retrying in %.0fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def open_source(settings: Settings, store: Store) -> GitSource:
    from chiffon.controllers.source import GitSource, SourceConfig

    config = SourceConfig(
        location=settings.resolved_intents_repo,
        checkout_dir=settings.home / "checkouts" / "intents",
        branch=settings.intents_branch,
        path=settings.intents_path,
        poll_interval=settings.git_poll_interval,
        verify=verify_config(settings),
    )
    source = GitSource(config, store)
    await source.open()
    return source


def verify_config(settings: Settings) -> VerifyConfig | None:
    """How the intents repo's commits are verified; None when they are not (chiffon/gitsign.py)."""
    from chiffon.gitsign import VerifyConfig

    if settings.intents_verify_commits == "off" or settings.intents_trusted_keys is None:
        return None
    return VerifyConfig(
        settings.intents_verify_commits, settings.intents_trusted_keys, settings.intents_signing_key
    )


async def open_signer(settings: Settings) -> CommitSigner | None:
    """Chiffon's own signing key, when commits are verified and it has one."""
    from chiffon.gitsign import CommitSigner

    if settings.intents_verify_commits == "off" or settings.intents_signing_key is None:
        return None
    return await CommitSigner.open(settings.intents_verify_commits, settings.intents_signing_key)


async def stored_tokens_exist(settings: Settings) -> bool:
    """Whether the database holds a live API token; asked only when it decides whether Chiffon may start."""
    from chiffon.api.auth import has_live_tokens

    if not settings.listens_beyond_loopback or settings.api_token is not None:
        return False
    if settings.database_url is None and not (settings.home / "chiffon.db").exists():
        return False  # a fresh state directory: no token, and no database to create just to say so
    store = await open_store(settings)
    try:
        return await has_live_tokens(store)
    finally:
        await store.close()


def check_listen_address(settings: Settings, *, stored_tokens: bool = False) -> None:
    if settings.listens_beyond_loopback and settings.api_token is None and not stored_tokens:
        raise StartupError(
            f"refusing to listen on {settings.host} without authentication: "
            "create a token with `chiffon token create NAME --role admin` "
            "(or set CHIFFON_API_TOKEN), or listen on 127.0.0.1"
        )
    with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}); "
                "is another Chiffon running? Choose another port with --port"
            ) from None


# Running -------------------------------------------------------------------------------------


async def _serve(settings: Settings, context: ServerContext, loops: list[NamedLoop]) -> None:
    """Serve the API and run the loops; on SIGINT/SIGTERM stop both and let the loops drain."""
    import uvicorn

    from chiffon.api.app import create_app
    from chiffon.controllers.manager import Manager

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn would re-raise the signal after serving, killing the process before
            # the controller drains and the agents say goodbye; we handle signals below.
            yield

    config = uvicorn.Config(
        create_app(context),
        host=settings.host,
        port=settings.port,
        lifespan="off",
        log_level=settings.log_level.lower(),
        access_log=False,
        # Open log streams (chiffonctl logs -f) would hold a shutdown forever; followers reconnect.
        timeout_graceful_shutdown=3,
    )
    server = Server(config)
    stop = asyncio.Event()

    def request_stop() -> None:
        server.should_exit = True
        stop.set()

    on_stop_signals(request_stop)
    manager = asyncio.create_task(Manager(loops).run(stop), name="manager")
    try:
        await server.serve()
    finally:
        stop.set()
        await manager


async def _run_until_signal(loops: list[NamedLoop]) -> None:
    from chiffon.controllers.manager import Manager

    stop = asyncio.Event()
    on_stop_signals(stop.set)
    await Manager(loops).run(stop)


def on_stop_signals(callback: Callable[[], None]) -> None:
    """Call ``callback`` on the event loop at SIGINT/SIGTERM (Ctrl+C and ``Stop-Process`` on Windows).

    The loop's own signal handlers are Unix only; elsewhere (Windows) a plain signal
    handler hands the callback to the loop, which is as prompt for a clean stop.
    """
    running = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            running.add_signal_handler(signum, callback)
        except NotImplementedError:
            signal.signal(signum, lambda _signum, _frame: running.call_soon_threadsafe(callback))


def controller_loop(settings: Settings, store: Store, bus: Bus, source: GitSource, infra: Path) -> NamedLoop:
    """The controller, behind leader election: only the leader reconciles and dispatches.

    Steps that name only a goal are resolved through the playbook catalog (its model loads on first use).
    """
    from chiffon.agents.catalog.index import catalog_from_settings
    from chiffon.agents.catalog.resolver import CatalogResolver
    from chiffon.controllers.controller import Controller
    from chiffon.controllers.leader import LeaderElector
    from chiffon.controllers.liveness import LivenessConfig
    from chiffon.controllers.manager import NamedLoop
    from chiffon.controllers.planner import Planner

    planner = Planner(infra, goals=CatalogResolver(catalog_from_settings(settings, infra)))
    controller = Controller(store, bus, source, planner, liveness=LivenessConfig.from_settings(settings))
    elector = LeaderElector(store, holder=f"{socket.gethostname()}:{os.getpid()}")
    return NamedLoop("controller", lambda stop: elector.run(stop, controller.lead))


AUDIT_GIT_ELECTION = "audit-git"


def audit_git_loop(settings: Settings, store: Store) -> NamedLoop:
    """Copies audit events into the audit repo, behind an election of its own: one writer at a time."""
    from chiffon.controllers.audit_git import AuditGitWriter
    from chiffon.controllers.leader import LeaderElector
    from chiffon.controllers.manager import NamedLoop
    from chiffon.gitrepo import GitRepo

    async def lead(_epoch: int, lost: asyncio.Event) -> None:
        repo = await GitRepo.init(
            settings.resolved_audit_repo,
            initial_files={"README.md": AUDIT_README},
            message="Create the audit repo",
        )
        await AuditGitWriter(store, repo).run(lost)

    elector = LeaderElector(store, name=AUDIT_GIT_ELECTION, holder=f"{socket.gethostname()}:{os.getpid()}")
    return NamedLoop("audit-git", lambda stop: elector.run(stop, lead))


def notify_loops(settings: Settings, store: Store) -> list[NamedLoop]:
    """Webhook notices from the audit trail (controllers/notify.py), when webhooks are configured."""
    if not settings.notify_webhooks:
        return []
    from chiffon.controllers.leader import LeaderElector
    from chiffon.controllers.manager import NamedLoop
    from chiffon.controllers.notify import Notifier, Webhook

    notifier = Notifier(store, [Webhook.from_setting(hook) for hook in settings.notify_webhooks])

    async def lead(_epoch: int, lost: asyncio.Event) -> None:
        await notifier.run(lost)

    elector = LeaderElector(store, name="notify", holder=f"{socket.gethostname()}:{os.getpid()}")
    return [NamedLoop("notify", lambda stop: elector.run(stop, lead))]


def suggestion_loop(store: Store, infra: Path) -> NamedLoop:
    """The quick suggestion scan after runs finish (agents/suggestions/scanner.py), one scanner at a time."""
    from chiffon.agents.suggestions.scanner import SuggestionScanner
    from chiffon.controllers.leader import LeaderElector
    from chiffon.controllers.manager import NamedLoop

    async def lead(_epoch: int, lost: asyncio.Event) -> None:
        await SuggestionScanner(store, infra).run(lost)

    elector = LeaderElector(store, name="suggestions", holder=f"{socket.gethostname()}:{os.getpid()}")
    return NamedLoop("suggestions", lambda stop: elector.run(stop, lead))


async def open_message_bus(settings: Settings, *, wait: bool = False) -> Bus:
    from chiffon.bus import BusError, open_bus

    bus = open_bus(settings.broker_url, prefix=settings.bus_prefix)
    await until_available("the message bus", bus.connect, wait=wait, errors=(BusError,))
    return bus


def agent_work_dir(settings: Settings, agent_id: str) -> Path:
    """Where an agent keeps its journal and run directories: never inside the infra repo."""
    return settings.home / "agents" / agent_id


def embedded_lab_root(settings: Settings) -> str:
    """The lab's scratch folder for ``chiffon up``: $CHIFFON_LAB_ROOT, else <home>/lab."""
    return os.environ.get("CHIFFON_LAB_ROOT") or str(settings.home / "lab")


# The embedded agents stop with the process: a person pressing Ctrl-C expects it to be quick.
EMBEDDED_SHUTDOWN_GRACE = 10.0
# The in-process bus forgets what was in flight when the process exits: results of the last
# day are published again at start (the controller ignores those it already has).
EMBEDDED_RESEND_SECONDS = 24 * 3600.0


def embedded_agent_loops(settings: Settings, bus: Bus, infra: Path) -> list[NamedLoop]:
    """The infra agent and this machine's desktop agent, on the same in-process bus."""
    from chiffon.agents.capacity import hostname
    from chiffon.agents.desktop import DesktopAgent
    from chiffon.agents.infra import InfraAgent
    from chiffon.controllers.manager import NamedLoop

    infra_id = f"infra-{hostname()}"
    infra_agent = InfraAgent(
        bus,
        repo=infra,
        work_dir=agent_work_dir(settings, infra_id),
        agent_id=infra_id,
        labels={"role": "infra"},
        env={"CHIFFON_LAB_ROOT": embedded_lab_root(settings)},
        shutdown_grace=EMBEDDED_SHUTDOWN_GRACE,
        resend_results_within=EMBEDDED_RESEND_SECONDS,
    )
    desktop = DesktopAgent(bus, agent_id=f"desktop-{hostname()}")
    return [
        NamedLoop(f"agent {infra_agent.agent_id}", infra_agent.run),
        NamedLoop(f"agent {desktop.agent_id}", desktop.run),
    ]


def warm_chat(context: ServerContext) -> None:
    """Load the chat compiler's catalog and model in the background, so the first request is quick."""
    from chiffon.api.chat import chat_service

    def warm() -> None:
        try:
            chat_service(context.settings, context.store, context.writer).catalog.warm()
        except Exception:  # the first chat request reports what is wrong
            log.warning("could not prepare the chat compiler; the first request tries again", exc_info=True)

    threading.Thread(target=warm, name="chat-warm", daemon=True).start()


async def run_up(settings: Settings) -> None:
    from chiffon.api.context import ServerContext
    from chiffon.controllers.intents_writer import IntentsWriter

    check_listen_address(settings, stored_tokens=await stored_tokens_exist(settings))
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.infra_repo is None and settings.compiler_default_limit is None:
        # The bundled example's lab host: a request that names no host rehearses on this machine.
        settings = settings.model_copy(update={"compiler_default_limit": "localhost"})
    infra = await prepare_infra_repo(settings)
    await prepare_git_repos(settings)
    store = await open_store(settings)
    bus = await open_message_bus(settings)
    try:
        source = await open_source(settings, store)
        await source.sync()
        context = ServerContext(settings, store, source, IntentsWriter(source))
        warm_chat(context)
        _banner(settings, infra)
        loops = [
            controller_loop(settings, store, bus, source, infra),
            audit_git_loop(settings, store),
            suggestion_loop(store, infra),
            *notify_loops(settings, store),
            *embedded_agent_loops(settings, bus, infra),
        ]
        await _serve(settings, context, loops)
    finally:
        await bus.close()
        await store.close()


async def run_api(settings: Settings) -> None:
    from chiffon.api.context import ServerContext
    from chiffon.controllers.intents_writer import IntentsWriter

    check_listen_address(settings, stored_tokens=await stored_tokens_exist(settings))
    store = await open_store(settings)
    try:
        source = await open_source(settings, store)
        context = ServerContext(settings, store, source, IntentsWriter(source))
        warm_chat(context)
        await _serve(settings, context, [])
    finally:
        await store.close()


async def run_controller(settings: Settings) -> None:
    store = await open_store(settings, wait=True)
    bus = await open_message_bus(settings, wait=True)
    try:
        source = await open_source(settings, store)
        infra = settings.resolved_infra_repo
        await _run_until_signal(
            [
                controller_loop(settings, store, bus, source, infra),
                audit_git_loop(settings, store),
                suggestion_loop(store, infra),
                *notify_loops(settings, store),
            ]
        )
    finally:
        await bus.close()
        await store.close()


async def run_agent(settings: Settings, agent: InfraAgent | DesktopAgent, bus: Bus) -> None:
    from chiffon.controllers.manager import NamedLoop

    try:
        await _run_until_signal([NamedLoop(f"agent {agent.agent_id}", agent.run)])
    finally:
        await bus.close()


async def open_agent_bus(settings: Settings) -> Bus:
    if not settings.broker_url:
        raise StartupError(
            "an agent on its own needs RabbitMQ: set CHIFFON_BROKER_URL (or broker_url in chiffon.yaml); "
            "`chiffon up` runs both agents in process without one"
        )
    return await open_message_bus(settings, wait=True)  # a broker outage at start is waited out


def _banner(settings: Settings, infra: Path) -> None:
    from chiffon.agents.capacity import hostname

    url = f"http://{settings.host}:{settings.port}"
    lines = [
        f"Chiffon is up on {url}  (API docs: {url}/docs)",
        f"  state:         {settings.home}",
        f"  database:      {_redact(settings.resolved_database_url)}",
        f"  intents repo:  {settings.resolved_intents_repo}",
        f"  homelab-infra: {infra}",
        f"  agents:        infra-{hostname()}, desktop-{hostname()} (lab root {embedded_lab_root(settings)})",
        "Next, in another terminal:  chiffonctl apply -f examples/intents/  &&  chiffonctl get intents",
        "Stop with Ctrl-C.",
    ]
    print("\n".join(lines), flush=True)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":")[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in credentials else url


# Commands ------------------------------------------------------------------------------------

HomeOption = Annotated[Path | None, typer.Option("--home", help="state directory [env: CHIFFON_HOME]")]
HostOption = Annotated[str | None, typer.Option("--host", help="address to listen on [default: 127.0.0.1]")]
PortOption = Annotated[int | None, typer.Option("--port", help="port to listen on [default: 8787]")]
InfraOption = Annotated[
    Path | None, typer.Option("--infra-repo", help="your homelab-infra checkout [env: CHIFFON_INFRA_REPO]")
]
IntentsOption = Annotated[
    str | None, typer.Option("--intents-repo", help="path or git URL of the intents repo")
]


def load_settings(**overrides: object) -> Settings:
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except (ValidationError, ValueError) as exc:
        raise StartupError(f"invalid settings: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}"
    return str(exc).splitlines()[0]


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Turn the errors a person can fix into one line and exit status 2."""
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        if not is_fixable(exc):
            raise
        typer.echo(f"chiffon: error: {exc}", err=True)
        raise typer.Exit(2) from None


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # watchfiles logs every batch of file events at INFO; the sync that follows says what mattered.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


@app.command()
def up(
    home: HomeOption = None,
    host: HostOption = None,
    port: PortOption = None,
    infra_repo: InfraOption = None,
    intents_repo: IntentsOption = None,
) -> None:
    """Run Chiffon in one process: API, controllers, SQLite, local git repos."""
    with _reported():
        settings = load_settings(
            home=home, host=host, port=port, infra_repo=infra_repo, intents_repo=intents_repo
        )
        _configure_logging(settings)
        asyncio.run(run_up(settings))


@app.command()
def api(home: HomeOption = None, host: HostOption = None, port: PortOption = None) -> None:
    """Run only the API server (distributed mode)."""
    with _reported():
        settings = load_settings(home=home, host=host, port=port)
        _configure_logging(settings)
        asyncio.run(run_api(settings))


@app.command()
def controller(home: HomeOption = None) -> None:
    """Run only the controllers (distributed mode)."""
    with _reported():
        settings = load_settings(home=home)
        _configure_logging(settings)
        asyncio.run(run_controller(settings))


@app.command()
def migrate(home: HomeOption = None) -> None:
    """Create or upgrade the database schema, then exit."""
    with _reported():
        settings = load_settings(home=home)

        async def _migrate() -> None:
            store = await open_store(settings)
            await store.close()

        asyncio.run(_migrate())
        typer.echo(f"database at {_redact(settings.resolved_database_url)} is up to date")


# API tokens ----------------------------------------------------------------------------------

token_app = typer.Typer(
    help="Bearer tokens of the API, each with a role: viewer < operator < approver < admin.",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")

# chiffon.api.auth.Role, written out so that `--help` does not import the API (a test checks they agree).
ROLE_NAMES = ("viewer", "operator", "approver", "admin")


def _token_creator() -> str:
    import getpass

    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (chiffon token create)"


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="who or what holds the token, e.g. alice or ci")],
    role: Annotated[str, typer.Option("--role", help=f"one of {', '.join(ROLE_NAMES)}")],
    home: HomeOption = None,
) -> None:
    """Create a token and print it, once: only its sha256 is stored."""
    from chiffon.api.auth import Role, check_token_name, create_token, has_live_tokens

    try:
        chosen = Role.parse(role)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--role") from None
    try:
        check_token_name(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None
    with _reported():
        settings = load_settings(home=home)

        async def _create() -> tuple[str, bool]:
            store = await open_store(settings)
            try:
                first = not await has_live_tokens(store)
                return await create_token(store, name, chosen, _token_creator()), first
            finally:
                await store.close()

        try:
            token, first = asyncio.run(_create())
        except ValueError as exc:
            typer.echo(f"chiffon: error: {exc}; revoke it first or choose another name", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"Created token {name!r} with role {chosen}. It is shown only now; keep it somewhere safe:")
    typer.echo(f"\n    {token}\n")
    typer.echo(f"Use it with chiffonctl:  export CHIFFON_TOKEN={token}")
    if first and settings.api_token is None:
        typer.echo(
            "This is the first token: from now on every API call needs one "
            "(the API stops accepting calls without a token within a few seconds)."
        )


@token_app.command("list")
def token_list(home: HomeOption = None) -> None:
    """The tokens by name with role, creation and revocation (never the tokens themselves)."""
    with _reported():
        settings = load_settings(home=home)

        async def _list() -> list[tuple[str, ...]]:
            store = await open_store(settings)
            try:
                tokens = await store.list_tokens()
            finally:
                await store.close()
            return [
                (
                    token.name,
                    token.role,
                    f"{token.created_at:%Y-%m-%d %H:%M}",
                    token.created_by,
                    f"{token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "-",
                )
                for token in tokens
            ]

        rows = asyncio.run(_list())
    if not rows:
        typer.echo("No tokens. Create one with `chiffon token create NAME --role ROLE`.")
        return
    table = [("NAME", "ROLE", "CREATED", "BY", "REVOKED"), *rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    for row in table:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="the token's name")],
    home: HomeOption = None,
) -> None:
    """Revoke a token: calls with it are refused from now on."""
    from chiffon.api.auth import revoke_token

    with _reported():
        settings = load_settings(home=home)

        async def _revoke() -> bool:
            store = await open_store(settings)
            try:
                return await revoke_token(store, name)
            finally:
                await store.close()

        revoked = asyncio.run(_revoke())
    if not revoked:
        typer.echo(f"chiffon: error: no live token is named {name!r} (see `chiffon token list`)", err=True)
        raise typer.Exit(1)
    typer.echo(f"Revoked token {name!r}.")


# Agents --------------------------------------------------------------------------------------

agent_app = typer.Typer(
    help="Run an agent on this machine (distributed mode; needs CHIFFON_BROKER_URL).",
    no_args_is_help=True,
)
app.add_typer(agent_app, name="agent")

IdOption = Annotated[str | None, typer.Option("--id", help="agent id [default: <kind>-<hostname>]")]
LabelOption = Annotated[
    list[str] | None, typer.Option("--label", help="a label KEY=VALUE, repeatable; adds to the defaults")
]
HeartbeatOption = Annotated[
    float, typer.Option("--heartbeat-interval", min=1.0, help="seconds between heartbeats")
]
# chiffon.agents.infra.DEFAULT_MAX_CONCURRENT, written out so that every command does not import
# ansible-runner to show it (tests/unit/test_cli_imports.py checks that they agree).
MAX_CONCURRENT_DEFAULT = 2
MaxConcurrentOption = Annotated[
    int, typer.Option("--max-concurrent", min=1, help="playbooks run at the same time")
]


def parse_labels(given: list[str] | None, defaults: dict[str, str]) -> dict[str, str]:
    labels = dict(defaults)
    for item in given or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--label")
        labels[key.strip()] = value.strip()
    return labels


@agent_app.command("infra")
def agent_infra(
    home: HomeOption = None,
    infra_repo: InfraOption = None,
    agent_id: IdOption = None,
    label: LabelOption = None,
    max_concurrent: MaxConcurrentOption = MAX_CONCURRENT_DEFAULT,
    heartbeat_interval: HeartbeatOption = 15.0,
) -> None:
    """Run playbooks sent to this agent with ansible-runner, against the homelab-infra checkout."""
    from chiffon.agents.capacity import hostname
    from chiffon.agents.infra import InfraAgent

    with _reported():
        settings = load_settings(home=home, infra_repo=infra_repo)
        _configure_logging(settings)
        repo = settings.resolved_infra_repo
        if not repo.is_dir():
            raise StartupError(f"the homelab-infra checkout {repo} does not exist; pass --infra-repo PATH")
        labels = parse_labels(label, {"role": "infra"})
        chosen = agent_id or f"infra-{hostname()}"

        async def _main() -> None:
            bus = await open_agent_bus(settings)
            try:
                agent = InfraAgent(
                    bus,
                    repo=repo,
                    work_dir=agent_work_dir(settings, chosen),
                    agent_id=chosen,
                    labels=labels,
                    max_concurrent=max_concurrent,
                    heartbeat_interval=heartbeat_interval,
                )
            except ValueError as exc:
                await bus.close()
                raise StartupError(str(exc)) from None
            await run_agent(settings, agent, bus)

        asyncio.run(_main())


@agent_app.command("desktop")
def agent_desktop(
    home: HomeOption = None,
    agent_id: IdOption = None,
    label: LabelOption = None,
    busy: Annotated[
        bool, typer.Option("--busy", help="report this machine busy: nothing is scheduled")
    ] = False,
    busy_process: Annotated[
        list[str] | None,
        typer.Option(
            "--busy-process", help="busy while a process of this name runs (e.g. a game); repeatable"
        ),
    ] = None,
    heartbeat_interval: HeartbeatOption = 15.0,
) -> None:
    """Report this machine's CPU, memory and GPUs so the scheduler can place runs on it."""
    from chiffon.agents.desktop import DesktopAgent, default_desktop_labels

    with _reported():
        settings = load_settings(home=home)
        _configure_logging(settings)
        labels = parse_labels(label, default_desktop_labels())

        async def _main() -> None:
            bus = await open_agent_bus(settings)
            try:
                agent = DesktopAgent(
                    bus,
                    agent_id=agent_id,
                    labels=labels,
                    heartbeat_interval=heartbeat_interval,
                    busy=busy,
                    busy_processes=busy_process or [],
                )
            except ValueError as exc:
                await bus.close()
                raise StartupError(str(exc)) from None
            await run_agent(settings, agent, bus)

        asyncio.run(_main())


def main() -> None:
    app()
