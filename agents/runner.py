"""The ansible-runner adapter: the only module that imports ``ansible_runner`` (STYLE 9).

``ansible_runner.run(**kwargs)`` takes dozens of untyped keywords and calls
back from its own thread. This module turns that into one typed coroutine,
:func:`run_playbook`: a :class:`PlaybookJob` in, batches of
:class:`~chiffon.resources.messages.AnsibleEvent` out while it runs, one
:class:`PlaybookOutcome` at the end, its status in ansible-runner's own words
(``successful|failed|timeout|canceled``).

How it runs a job, and why:

* **One private data dir per run**, ``<work dir>/<run id>``, outside the repo;
  ``ident`` is the run id, so the artifacts (status, rc, stdout, one JSON file
  per event) are in ``<work dir>/<run id>/artifacts/<run id>``. Per run, because
  ansible-runner writes ``env/extravars`` and friends into the private data
  dir only when they are *not there yet*: a shared dir would silently give
  every later run the first run's extra vars.
* **Extra vars are data, never templates.** They come from intents (and so,
  potentially, from an LLM). They are written as a YAML file whose every
  string carries Ansible's ``!unsafe`` tag and passed with ``-e @file``; a value
  such as ``"{{ lookup('env','HOME') }}"`` reaches the playbook as that text.
  (``extravars={...}`` would put them on the command line as JSON, where
  Ansible templates them.) Only the file is written: ``suppress_env_files``
  keeps ansible-runner from dumping the environment into ``env/envvars``.
* **Settings in a file too**: ``env/settings`` sets ``pexpect_timeout`` to a
  quarter second. ansible-runner checks the cancel callback and the job
  timeout once per pexpect timeout (5 s by default), and it ignores a
  ``settings=`` argument unless that file exists.
* **The repo is the project dir**: ``project_dir`` is the homelab-infra
  checkout and the working directory; ``ANSIBLE_CONFIG`` points at its
  ``ansible.cfg`` (Ansible ignores one in a world-writable directory);
  ``ansible-playbook`` is the one beside this Python (``PATH`` is extended);
  colour is off; Ansible's local temp files go into the run's dir.
* **Cancel and timeout** are ansible-runner's: ``cancel_callback`` returns
  True once the caller's event is set (or the coroutine is cancelled), and
  ``timeout`` makes it kill the process group and report ``timeout``.
  ansible-runner kills only ``ansible-playbook``'s process group, but Ansible's
  worker processes call ``setsid()`` and would live on (a ``sleep 120`` task
  keeps running); so after a canceled or timed-out run the process tree seen
  while sampling is checked and whatever still runs gets SIGKILL too. (Not
  after a run that ended by itself: it may have started daemons on purpose.)
* **Events** are mapped in the runner's thread and handed to the event loop;
  they go out in batches of at most :data:`BATCH_SIZE` events or
  :data:`BATCH_SECONDS`, whichever comes first. ``seq`` is ansible-runner's
  counter; output is trimmed to 4096 characters, and the output of a ``no_log``
  result is replaced by :data:`HIDDEN`.
* **Resource usage** is sampled from the ``ansible-playbook`` process tree with
  psutil (through :mod:`chiffon.agents.capacity`) from the cancel callback,
  which ansible-runner calls every quarter second; see
  :class:`~chiffon.agents.capacity.ProcessTreeUsage` for what is counted.
* **No secrets left behind**: ansible-runner writes the full environment of
  the run to ``artifacts/<ident>/command``; it is deleted after the run. And
  ansible-core (2.19) prints a failed ``no_log`` task's message on its
  ``[ERROR]`` line anyway, so what the display said for a ``no_log`` result is
  replaced by :data:`HIDDEN` in ansible-runner's own copies too — the event's
  JSON under ``job_events/`` and the ``stdout`` file — before the failure
  summary reads that file.
* **No sleep after the playbook**: ansible-runner closes its pexpect child
  once its loop has seen the child exit and reaped it, and ptyprocess's
  ``close()`` then sleeps 0.1 s ("to give the kernel time to update the
  process status") before checking whether it must kill the child. For a
  child already reaped the sleep is pure latency — a tenth of a second on
  every run, over 10 % of a no-op playbook. ansible-runner is given a
  ``pexpect`` whose ``spawn`` skips the sleep for a reaped child
  (:class:`_PromptCloseSpawn`); a child still alive is closed as before.
  (``bench/agents.py`` measures the whole path against bare
  ``ansible-playbook``.)
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import json
import logging
import math
import os
import shutil
import threading
import time
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import ansible_runner
import ansible_runner.runner
import pexpect

from chiffon.agents.capacity import ProcessTreeUsage
from chiffon.ansible_cli import AnsibleCliError, find_ansible_playbook
from chiffon.resources.base import validate_repo_path
from chiffon.resources.messages import MAX_EVENT_OUTPUT, AnsibleEvent
from chiffon.resources.run import HostStats, ResourceUsage

log = logging.getLogger(__name__)

Status = Literal["successful", "failed", "timeout", "canceled"]
EventSink = Callable[[list[AnsibleEvent]], Awaitable[None]]

BATCH_SIZE = 50
BATCH_SECONDS = 0.1  # a run event should reach a watching page within half a second
POLL_SECONDS = 0.25
HIDDEN = "(output hidden: no_log)"
MAX_ERROR_CHARS = 500

_STATUS_OF_EVENT: dict[str, str] = {
    "runner_on_failed": "failed",
    "runner_item_on_failed": "failed",
    "runner_on_async_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_item_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}
_OK_EVENTS = frozenset({"runner_on_ok", "runner_item_on_ok", "runner_on_async_ok"})


class _PromptCloseSpawn(pexpect.spawn):  # type: ignore[misc]
    """``pexpect.spawn`` whose ``close()`` does not sleep for a child that has already been reaped."""

    def close(self, force: bool = True) -> None:
        if not self.isalive():  # waitpid said it is gone: nothing for the kernel to catch up on
            self.ptyproc.delayafterclose = 0.0
        super().close(force=force)


def _pexpect_without_close_delay() -> types.ModuleType:
    """The ``pexpect`` module as ansible-runner's Runner sees it, with :class:`_PromptCloseSpawn`."""
    module = types.ModuleType(pexpect.__name__, pexpect.__doc__)
    module.__dict__.update(vars(pexpect))
    module.spawn = _PromptCloseSpawn  # type: ignore[attr-defined]
    return module


# ansible-runner is imported by this module only (tests/unit/test_layers.py), so the change
# reaches no one else; a release that stops using pexpect there is left alone.
if getattr(ansible_runner.runner, "pexpect", None) is pexpect:
    ansible_runner.runner.pexpect = _pexpect_without_close_delay()


class InvalidJobError(ValueError):
    """A job that cannot run as given (a path outside the repo, no playbook, …); one line."""


@dataclass(frozen=True)
class PlaybookJob:
    """One ansible-playbook run, as the infra agent asks for it."""

    run_id: str
    repo: Path
    """The homelab-infra checkout: ``playbook`` and ``inventory`` are relative to it."""
    work_dir: Path
    """Where run directories go (``<work dir>/<run id>``); never inside ``repo``."""
    playbook: str | None = None
    role: str | None = None
    inventory: str | None = None
    limit: str | None = None
    tags: Sequence[str] = ()
    skip_tags: Sequence[str] = ()
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    check: bool = False
    diff: bool = False
    timeout_seconds: int = 3600
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for Ansible, e.g. ``CHIFFON_LAB_ROOT``."""

    @property
    def private_data_dir(self) -> Path:
        return self.work_dir / self.run_id

    @property
    def artifact_dir(self) -> Path:
        return self.private_data_dir / "artifacts" / self.run_id


@dataclass(frozen=True)
class PlaybookOutcome:
    status: Status
    rc: int | None
    stats: dict[str, HostStats]
    duration_seconds: float
    usage: ResourceUsage | None = None
    error: str | None = None


# Checking a job ------------------------------------------------------------------------------


def resolve_in_repo(repo: Path, path: str, what: str) -> Path:
    """``path`` inside ``repo``, symlinks resolved; :class:`InvalidJobError` if it leaves the repo."""
    try:
        validate_repo_path(path)
    except ValueError as exc:
        raise InvalidJobError(f"{what} {exc}") from None
    root = repo.resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise InvalidJobError(f"{what} {path!r} resolves outside the homelab-infra repository")
    return resolved


def check_job(job: PlaybookJob) -> None:
    """Refuse what cannot run, before anything is accepted or started."""
    if not job.repo.is_dir():
        raise InvalidJobError(f"the homelab-infra repository {job.repo} does not exist on this agent")
    if job.work_dir.resolve().is_relative_to(job.repo.resolve()):
        raise InvalidJobError("the agent's work dir must not be inside the homelab-infra repository")
    if bool(job.playbook) == bool(job.role):
        raise InvalidJobError("a run needs exactly one of playbook or role")
    if job.playbook:
        if not resolve_in_repo(job.repo, job.playbook, "playbook").is_file():
            raise InvalidJobError(f"playbook {job.playbook!r} is not a file in the homelab-infra repository")
    elif job.role and (not job.role.replace(".", "").replace("_", "").replace("-", "").isalnum()):
        raise InvalidJobError(f"role {job.role!r} is not a role name")
    if job.inventory and not resolve_in_repo(job.repo, job.inventory, "inventory").exists():
        raise InvalidJobError(f"inventory {job.inventory!r} does not exist in the homelab-infra repository")


# Extra vars as YAML that Ansible never templates ---------------------------------------------


def unsafe_yaml(value: Any) -> str:
    """``value`` (plain data) as one line of YAML in flow style, every string tagged ``!unsafe``.

    Strings are written as double-quoted scalars with every non-printable or
    non-ASCII character escaped, so YAML's line folding and its idea of
    printable characters cannot change them. Floats carry ``!!float`` because
    YAML 1.1 reads ``1e+20`` as a string.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("extra vars must not hold NaN or infinity")
        return f'!!float "{value!r}"'
    if isinstance(value, str):
        return f"!unsafe {_quoted(value)}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(unsafe_yaml(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"extra vars keys must be strings (got {key!r})")
            items.append(f"{_quoted(key)}: {unsafe_yaml(item)}")
        return "{" + ", ".join(items) + "}"
    raise ValueError(f"extra vars must be plain data (got {type(value).__name__})")


def _quoted(text: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


# From runner events to AnsibleEvents ---------------------------------------------------------


def is_no_log(event: Mapping[str, Any]) -> bool:
    data = event.get("event_data") or {}
    result = data.get("res")
    if isinstance(result, Mapping):
        return bool(result.get("_ansible_no_log")) or "censored" in result
    return False


def trim(text: str, limit: int = MAX_EVENT_OUTPUT) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    if len(text) <= limit:
        return text
    note = f"\n… ({len(text) - limit} more characters trimmed)"
    return text[: limit - len(note)] + note


def event_status(event: Mapping[str, Any]) -> str | None:
    name = str(event.get("event", ""))
    if name in _STATUS_OF_EVENT:
        return _STATUS_OF_EVENT[name]
    if name not in _OK_EVENTS:
        return None
    result = (event.get("event_data") or {}).get("res")
    if isinstance(result, Mapping) and "changed" in result:
        return "changed" if result.get("changed") else "ok"
    # A no_log result is censored down to one key; the display line still says which it was.
    return "changed" if str(event.get("stdout", "")).lstrip().startswith("changed:") else "ok"


def to_event(event: Mapping[str, Any]) -> AnsibleEvent | None:
    """The protocol's view of one runner event; None for events with nothing to show."""
    status = event_status(event)
    stdout = str(event.get("stdout") or "")
    if status is None and not stdout.strip():
        return None  # runner_on_start, playbook_on_start, empty verbose lines
    data = event.get("event_data") or {}
    created = event.get("created")
    try:
        when = datetime.fromisoformat(str(created)) if created else None
    except ValueError:
        when = None
    return AnsibleEvent(
        seq=max(0, int(event.get("counter") or 0)),
        event=str(event.get("event") or "unknown"),
        task=_text_or_none(data.get("task")),
        host=_text_or_none(data.get("host")),
        status=status,
        output=HIDDEN if is_no_log(event) else trim(stdout),
        created=when,
    )


def _text_or_none(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def host_stats(stats_event_data: Mapping[str, Any]) -> dict[str, HostStats]:
    """``playbook_on_stats`` counters ({category: {host: n}}) turned around into per-host stats."""
    columns = {
        "ok": "ok",
        "changed": "changed",
        "failures": "failed",
        "skipped": "skipped",
        "dark": "unreachable",
        "rescued": "rescued",
        "ignored": "ignored",
    }
    hosts: dict[str, dict[str, int]] = {}
    for category in ("processed", *columns):
        counts = stats_event_data.get(category) or {}
        if not isinstance(counts, Mapping):
            continue
        for host, number in counts.items():
            row = hosts.setdefault(str(host), {})
            if category in columns:
                row[columns[category]] = int(number)
    return {host: HostStats(**row) for host, row in sorted(hosts.items())}


def failure_summary(failed: Mapping[str, Any] | None, stdout_tail: str) -> str:
    """One line about why a run failed, without secrets."""
    if failed is not None:
        data = failed.get("event_data") or {}
        task = data.get("task") or "a task"
        host = data.get("host") or "?"
        verb = "could not reach" if failed.get("event") == "runner_on_unreachable" else "failed on"
        result = data.get("res")
        message = ""
        if is_no_log(failed):
            message = HIDDEN
        elif isinstance(result, Mapping):
            message = str(result.get("msg") or result.get("stderr") or "")
        text = f"task {task!r} {verb} {host}" + (f": {message}" if message else "")
    else:
        text = stdout_tail or "ansible-playbook failed before running any task"
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


# Running -------------------------------------------------------------------------------------


def roles_path(repo: Path) -> list[str]:
    """Where the repo keeps roles: ``roles_path`` of its ansible.cfg, else ``roles/``, ``ansible/roles``."""
    found: list[str] = []
    config = repo / "ansible.cfg"
    if config.is_file():
        parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
        with contextlib.suppress(configparser.Error, UnicodeDecodeError):
            parser.read(config, encoding="utf-8")
            value = parser.get("defaults", "roles_path", fallback="")
            for part in value.split(os.pathsep):
                part = part.strip()
                if part:
                    path = Path(part).expanduser()
                    found.append(str(path if path.is_absolute() else (repo / path).resolve()))
    for default in (repo / "roles", repo / "ansible" / "roles"):
        if default.is_dir() and str(default.resolve()) not in found:
            found.append(str(default.resolve()))
    return found


def _environment(job: PlaybookJob) -> dict[str, str]:
    env: dict[str, str] = {}
    config = job.repo / "ansible.cfg"
    if config.is_file():
        env["ANSIBLE_CONFIG"] = str(config.resolve())
    binary_dir = str(find_ansible_playbook().parent)
    env["PATH"] = os.pathsep.join(filter(None, [binary_dir, os.environ.get("PATH", "")]))
    env.update(
        {
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "NO_COLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(job.private_data_dir / "tmp"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    if "LC_ALL" not in os.environ and "LANG" not in os.environ:
        env["LC_ALL"] = "C.UTF-8"  # ansible-core refuses to start under a non-UTF-8 locale
    env.update(job.env)
    return env


def _prepare_private_data_dir(job: PlaybookJob) -> None:
    directory = job.private_data_dir
    if directory.exists():
        # Left by an interrupted attempt of this run id; the journal decided it may run.
        shutil.rmtree(directory)
    (directory / "env").mkdir(parents=True, mode=0o700)
    (directory / "env" / "extravars").write_text(unsafe_yaml(dict(job.extra_vars)) + "\n")
    settings = {"pexpect_timeout": POLL_SECONDS, "suppress_ansible_output": True}
    (directory / "env" / "settings").write_text(json.dumps(settings) + "\n")


def _runner_arguments(job: PlaybookJob) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "private_data_dir": str(job.private_data_dir),
        "project_dir": str(job.repo.resolve()),
        "ident": job.run_id,
        "envvars": _environment(job),
        "suppress_env_files": True,
        "quiet": True,
        "timeout": job.timeout_seconds,
    }
    if job.playbook:
        arguments["playbook"] = job.playbook
    else:
        arguments["role"] = job.role
        arguments["roles_path"] = os.pathsep.join(roles_path(job.repo)) or None
        arguments["hosts"] = job.limit or "all"
    if job.inventory:
        arguments["inventory"] = str(resolve_in_repo(job.repo, job.inventory, "inventory"))
    if job.limit:
        arguments["limit"] = job.limit
    if job.tags:
        arguments["tags"] = ",".join(job.tags)
    if job.skip_tags:
        arguments["skip_tags"] = ",".join(job.skip_tags)
    flags = [flag for flag, wanted in (("--check", job.check), ("--diff", job.diff)) if wanted]
    if flags:
        arguments["cmdline"] = " ".join(flags)
    return arguments


class _Watch:
    """What the runner's thread shares with the event loop."""

    def __init__(self, job: PlaybookJob, cancel: asyncio.Event) -> None:
        self.cancel = cancel
        self.stop = threading.Event()
        self.usage = ProcessTreeUsage()
        self.marker = str(job.private_data_dir)
        self.stats: Mapping[str, Any] | None = None
        self.first_failure: Mapping[str, Any] | None = None
        self.hidden: list[str] = []  # what the display said for no_log results: never kept
        self._last_sample = 0.0

    def cancel_requested(self) -> bool:
        # Called by ansible-runner in its thread about every POLL_SECONDS: a good place to sample.
        now = time.monotonic()
        if now - self._last_sample >= POLL_SECONDS:
            self._last_sample = now
            try:
                if self.usage.find_root(self.marker):
                    self.usage.sample()
            except Exception:  # measuring must never break a run
                log.debug("could not sample the ansible-playbook process tree", exc_info=True)
        # asyncio.Event.is_set only reads a flag: safe from another thread.
        stopping = self.stop.is_set() or self.cancel.is_set()
        if stopping and self.usage.root_pid is not None:
            # Note the whole tree before ansible-runner kills the root and it falls apart.
            with contextlib.suppress(Exception):
                self.usage.sample()
        return stopping

    def clean_up(self, status: str) -> None:
        """After a run: make sure nothing of it is left running (see ProcessTreeUsage.kill_leftovers)."""
        try:
            killed = self.usage.kill_leftovers()
        except Exception:
            log.warning("could not look for leftover Ansible processes", exc_info=True)
            return
        if killed:
            log.info("killed %d leftover Ansible process(es) of a run that ended %s", killed, status)


async def run_playbook(job: PlaybookJob, on_events: EventSink, cancel: asyncio.Event) -> PlaybookOutcome:
    """Run ``job`` with ansible-runner; never raises for a failed run, only reports it.

    ``on_events`` gets batches of events in order, each awaited before the next.
    Setting ``cancel`` stops the run (status ``canceled``). Cancelling this
    coroutine also stops the run, waits for ansible-runner to finish, then
    re-raises.
    """
    started = time.monotonic()
    try:
        check_job(job)
        job.work_dir.mkdir(parents=True, exist_ok=True)
        _prepare_private_data_dir(job)
        arguments = _runner_arguments(job)
    except (InvalidJobError, AnsibleCliError, OSError, ValueError) as exc:
        return PlaybookOutcome("failed", None, {}, time.monotonic() - started, error=_one_line(exc))

    loop = asyncio.get_running_loop()
    watch = _Watch(job, cancel)
    events: asyncio.Queue[AnsibleEvent | None] = asyncio.Queue()

    def deliver(item: AnsibleEvent | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under a runaway thread
            loop.call_soon_threadsafe(events.put_nowait, item)

    def on_runner_event(event: dict[str, Any]) -> bool:
        try:
            name = event.get("event")
            if name == "playbook_on_stats":
                watch.stats = event.get("event_data") or {}
            elif (
                name in ("runner_on_failed", "runner_on_unreachable")
                and watch.first_failure is None
                and not (event.get("event_data") or {}).get("ignore_errors")
            ):
                watch.first_failure = event
            mapped = to_event(event)
            if is_no_log(event):
                said = str(event.get("stdout") or "")
                if said.strip() and said != HIDDEN:
                    watch.hidden.append(said)
                event["stdout"] = HIDDEN  # the JSON ansible-runner writes next keeps no more than we send
        except Exception:
            log.warning("could not read an ansible-runner event of run %s", job.run_id, exc_info=True)
            return True
        if mapped is not None:
            deliver(mapped)
        return True  # keep ansible-runner's own copy in the artifact dir

    done: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def work() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = ansible_runner.run(
                **arguments, event_handler=on_runner_event, cancel_callback=watch.cancel_requested
            )
        except BaseException as exc:
            error = exc
        finally:
            status = str(getattr(result, "status", "failed"))
            if error is not None or status in ("canceled", "timeout"):
                # Only runs that ansible-runner killed: a run that ended by itself may have
                # started daemons on purpose (async tasks with poll: 0, ssh ControlPersist).
                watch.clean_up(status)
            deliver(None)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    forwarding = asyncio.create_task(_forward(events, on_events, job.run_id), name=f"events of {job.run_id}")
    thread = threading.Thread(target=work, name=f"ansible-runner {job.run_id}", daemon=True)
    thread.start()
    try:
        runner = await asyncio.shield(done)
    except asyncio.CancelledError:
        watch.stop.set()
        with contextlib.suppress(Exception):
            await done
        forwarding.cancel()
        await asyncio.gather(forwarding, return_exceptions=True)
        raise
    except Exception as exc:
        await forwarding
        log.warning("ansible-runner failed to run %s: %s", job.run_id, _one_line(exc))
        error = f"ansible-runner: {_one_line(exc)}"
        return PlaybookOutcome("failed", None, {}, time.monotonic() - started, watch.usage.usage(), error)
    await forwarding
    return _outcome(job, runner, watch, time.monotonic() - started)


def _outcome(job: PlaybookJob, runner: Any, watch: _Watch, duration: float) -> PlaybookOutcome:
    status = str(runner.status)
    if status not in ("successful", "failed", "timeout", "canceled"):
        status = "failed"
    stats_data = watch.stats
    if stats_data is None:
        with contextlib.suppress(Exception):
            stats_data = runner.stats
    stats = host_stats(stats_data or {})
    error: str | None = None
    _scrub_stdout(job, watch.hidden)
    if status == "timeout":
        error = f"the run took longer than its timeout of {job.timeout_seconds}s and was stopped"
    elif status == "canceled":
        error = "the run was canceled"
    elif status == "failed":
        error = failure_summary(watch.first_failure, _stdout_tail(job))
    with contextlib.suppress(OSError):
        # ansible-runner's record of the command includes the agent's whole environment.
        (job.artifact_dir / "command").unlink()
    rc = runner.rc if isinstance(runner.rc, int) else None
    return PlaybookOutcome(status, rc, stats, round(duration, 3), watch.usage.usage(), error)  # type: ignore[arg-type]


def _scrub_stdout(job: PlaybookJob, hidden: Sequence[str]) -> None:
    """Replace in ansible-runner's ``stdout`` file what the display said for ``no_log`` results."""
    if not hidden:
        return
    path = job.artifact_dir / "stdout"
    try:
        text = path.read_text(errors="replace")
        scrubbed = text
        for said in sorted(set(hidden), key=len, reverse=True):
            for variant in (said, said.replace("\r\n", "\n")):
                scrubbed = scrubbed.replace(variant, HIDDEN)
        if scrubbed != text:
            path.write_text(scrubbed)
    except OSError as exc:
        log.warning("could not scrub the output of run %s; removing it: %s", job.run_id, exc)
        with contextlib.suppress(OSError):
            path.unlink()


def _stdout_tail(job: PlaybookJob, lines: int = 6) -> str:
    try:
        text = (job.artifact_dir / "stdout").read_text(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.replace("\r", "").splitlines() if line.strip()]
    errors = [line for line in kept if line.startswith(("[ERROR]", "ERROR!", "fatal:"))]
    return " ".join(errors[:2] or kept[-lines:])


async def _forward(events: asyncio.Queue[AnsibleEvent | None], on_events: EventSink, run_id: str) -> None:
    """Hand events on in batches of BATCH_SIZE or BATCH_SECONDS, until the end marker (None)."""
    loop = asyncio.get_running_loop()
    batch: list[AnsibleEvent] = []
    flush_at = 0.0

    async def flush() -> None:
        nonlocal batch
        if batch:
            try:
                await on_events(batch)
            except Exception:
                log.warning("could not hand on %d events of run %s", len(batch), run_id, exc_info=True)
            batch = []

    while True:
        timeout = None if not batch else max(0.0, flush_at - loop.time())
        try:
            item = await asyncio.wait_for(events.get(), timeout)
        except TimeoutError:
            await flush()
            continue
        if item is None:
            await flush()
            return
        if not batch:
            flush_at = loop.time() + BATCH_SECONDS
        batch.append(item)
        if len(batch) >= BATCH_SIZE:
            await flush()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
