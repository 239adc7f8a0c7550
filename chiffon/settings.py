"""Settings: flags, then ``CHIFFON_*`` environment variables, then ``chiffon.yaml``, then defaults.

Everything has a default that works on a laptop with nothing installed: the
embedded mode (SQLite, in-process bus, a state directory under
``$CHIFFON_HOME``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_HOME = Path("~/.local/share/chiffon").expanduser()
DEFAULT_PORT = 8787
CONFIG_FILE_NAME = "chiffon.yaml"


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads ``chiffon.yaml`` through the same hostile-input-safe loader as intents."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self._path is None or not self._path.is_file():
            return {}
        from chiffon.resources.yamlio import load_yaml_documents

        documents = load_yaml_documents(self._path.read_bytes(), str(self._path))
        if not documents or documents[0].data is None:
            return {}
        data = documents[0].data
        if not isinstance(data, dict):
            raise ValueError(f"{self._path}: expected a mapping of settings")
        return {str(key).replace("-", "_"): value for key, value in data.items()}


class Settings(BaseSettings):
    # An empty CHIFFON_API_TOKEN= means "unset", not "the empty token".
    model_config = SettingsConfigDict(env_prefix="CHIFFON_", extra="forbid", env_ignore_empty=True)

    home: Path = Field(default=DEFAULT_HOME, description="state directory")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; SQLite in home if unset"
    )
    broker_url: str | None = Field(default=None, description="amqp:// URL; in-process bus if unset")
    bus_prefix: str = Field(
        default="", max_length=100, description="prefix for queue names on a shared broker"
    )
    intents_repo: str | None = Field(default=None, description="local path or git URL of the intents repo")
    intents_branch: str | None = Field(
        default=None, description="branch to read; default: the checked-out or the remote's default branch"
    )
    intents_path: str = Field(default="", description="folder inside the intents repo that holds intents")
    # Signed commits (chiffon/gitsign.py, docs/install.md "Signed commits"), like Flux's spec.verify.
    intents_verify_commits: Literal["off", "gpg", "ssh"] = Field(
        default="off",
        description="sync the intents repo only while the commit at the tip of its branch is signed by one "
        "of intents_trusted_keys: gpg (OpenPGP; `openpgp` is accepted too) or ssh signatures, as git's "
        "gpg.format; off: no check",
    )
    intents_trusted_keys: Path | None = Field(
        default=None,
        validate_default=True,
        description="the keys commits must be signed with: for gpg a file of armored public keys "
        "(gpg --export --armor KEYID), imported into a keyring of Chiffon's own, never yours; for ssh an "
        "allowed signers file (git's gpg.ssh.allowedSignersFile: `alice@example.com ssh-ed25519 AAAA…`). "
        "Re-read when it changes",
    )
    intents_signing_key: Path | None = Field(
        default=None,
        validate_default=True,
        description="the key Chiffon signs its own commits to the intents repo with (apply, delete, "
        "rollback, chat): for gpg an armored secret key, for ssh a private key file, without a passphrase; "
        "its public key must be among intents_trusted_keys. Unset while commits are verified: the API "
        "refuses to write (409) and people commit signed changes with git",
    )
    infra_repo: Path | None = Field(default=None, description="the homelab-infra checkout")
    audit_repo: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    api_token: SecretStr | None = Field(default=None, description="bearer token required by the API")
    # API safety rules (docs/auth.md).
    approval_requires_other_person: bool = Field(
        default=False,
        description="refuse (403) an approval by the person whose change produced the intent's current spec",
    )
    chat_rate_per_minute: float = Field(
        default=30.0,
        ge=0,
        description="chat requests (propose, confirm, discard) a caller may make a minute; 0: no limit",
    )
    chat_rate_burst: int = Field(
        default=10, ge=1, description="chat requests a caller may make at once before the rate applies"
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="origins besides the server's own (e.g. https://chiffon.example behind a proxy) whose "
        "pages may call the API's state-changing endpoints",
    )
    git_poll_interval: float = Field(
        default=60.0, gt=0, description="seconds between fetches of a remote repo"
    )
    log_level: str = "INFO"
    # Agent liveness (controllers/liveness.py, docs/protocol.md §5).
    heartbeat_interval: float = Field(
        default=15.0, gt=0, description="seconds between heartbeats assumed for an agent that does not say"
    )
    missed_heartbeats: int = Field(
        default=3, ge=1, description="an agent silent for this many heartbeat intervals is offline"
    )
    lost_run_grace: float | None = Field(
        default=None,
        gt=0,
        description="seconds an Unknown run waits for its agent to claim it before it fails; "
        "default: one more heartbeat deadline",
    )
    liveness_check_interval: float = Field(
        default=5.0, gt=0, description="most seconds between two liveness checks of the controller"
    )
    # The playbook catalog (agents/catalog).
    catalog_cache_dir: Path | None = Field(
        default=None,
        description="where catalog discoveries and embeddings are cached; default <home>/cache/catalog",
    )
    catalog_refresh_interval: float = Field(
        default=3600.0,
        gt=0,
        description="seconds after which the catalog re-reads homelab-infra even when no file seems changed",
    )
    # Suggestions (agents/suggestions): where accepted patches are committed, how long lint may take.
    suggestions_on_current_branch: bool = Field(
        default=False,
        description="commit accepted suggestions on homelab-infra's checked-out branch "
        "instead of a new branch chiffon/suggestion-<id>",
    )
    lint_timeout: float = Field(default=300.0, gt=0, description="seconds one ansible-lint run may take")
    # Notifications (controllers/notify.py): webhooks called on approval needed, run failed, drift found.
    notify_webhooks: list[dict[str, Any]] = Field(
        default_factory=list,
        description="each {url, format: json|ntfy|gotify, events: [approval, failure, drift], token}",
    )
    # The chat compiler (agents/compiler).
    compiler_default_limit: str | None = Field(
        default=None,
        max_length=1000,
        description="host pattern an intent compiled from a request targets when the request names no host; "
        "default: none (the playbooks' own hosts); `chiffon up` with the bundled example uses localhost",
    )
    # Language models (agents/llm.py, docs/llm.md): local first, the external model when it is worth it.
    llm_local_model: str | None = Field(
        default=None,
        description="litellm name of the local model, e.g. ollama_chat/llama3.1:8b; none: no local model",
    )
    llm_local_api_base: str | None = Field(
        default=None, description="where the local model answers, e.g. http://127.0.0.1:11434"
    )
    llm_external_model: str | None = Field(
        default=None,
        description="litellm name of the external model, e.g. anthropic/claude-sonnet-4-5; none: local only",
    )
    llm_external_api_key: SecretStr | None = Field(
        default=None,
        description="API key of the external model; none: the provider's variable, e.g. ANTHROPIC_API_KEY",
    )
    llm_local_daily_tokens: int = Field(
        default=200_000,
        ge=0,
        description="tokens a UTC day the local model may spend before the external one is preferred",
    )
    llm_external_monthly_budget_usd: float = Field(
        default=10.0,
        ge=0,
        description="US dollars a calendar month the external model may cost; 0: never use it",
    )
    llm_timeout: float = Field(
        default=30.0, gt=0, description="seconds one LLM call may take before the next model is tried"
    )
    llm_complexity_threshold: float = Field(
        default=0.6,
        ge=0,
        le=1,
        description="a request scoring at least this (0-1) goes to the external model first",
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        origins = []
        for origin in value:
            cleaned = origin.strip().rstrip("/").lower()
            if not re.fullmatch(r"https?://[^/\s?#]+", cleaned):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port], e.g. https://chiffon.lan"
                )
            origins.append(cleaned)
        return origins

    @field_validator("intents_verify_commits", mode="before")
    @classmethod
    def _verify_mode(cls, value: Any) -> Any:
        if value is False:
            return "off"  # `intents_verify_commits: false` means what it says
        if isinstance(value, str):
            cleaned = value.strip().lower()
            return "gpg" if cleaned == "openpgp" else cleaned
        return value

    @field_validator("intents_trusted_keys")
    @classmethod
    def _trusted_keys_needed(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        mode = info.data.get("intents_verify_commits")
        if mode in ("gpg", "ssh") and value is None:
            what = "a file of armored public keys" if mode == "gpg" else "an allowed signers file"
            raise ValueError(f"intents_verify_commits={mode} needs intents_trusted_keys: {what}")
        return value

    @field_validator("intents_signing_key")
    @classmethod
    def _signing_needs_verification(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("intents_verify_commits", "off") == "off":
            raise ValueError(
                "intents_signing_key is set but intents_verify_commits is off; set it to gpg or ssh, "
                "the format of the key"
            )
        return value

    @field_validator(
        "home",
        "infra_repo",
        "audit_repo",
        "catalog_cache_dir",
        "intents_trusted_keys",
        "intents_signing_key",
        mode="before",
    )
    @classmethod
    def _expand_user(cls, value: Any) -> Any:
        return Path(str(value)).expanduser() if value not in (None, "") else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = os.environ.get("CHIFFON_CONFIG")
        if config:
            path = Path(config).expanduser()
        else:
            # The --home flag wins over $CHIFFON_HOME when choosing which chiffon.yaml to read.
            given = getattr(init_settings, "init_kwargs", {}).get("home")
            home = given or os.environ.get("CHIFFON_HOME") or DEFAULT_HOME
            path = Path(str(home)).expanduser() / CONFIG_FILE_NAME
        return (init_settings, env_settings, _YamlFileSource(settings_cls, path))

    # Derived locations --------------------------------------------------------------

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home / 'chiffon.db'}"

    @property
    def resolved_intents_repo(self) -> str:
        return self.intents_repo or str(self.home / "intents")

    @property
    def resolved_infra_repo(self) -> Path:
        return self.infra_repo or self.home / "homelab-infra"

    @property
    def resolved_catalog_cache_dir(self) -> Path:
        return self.catalog_cache_dir or self.home / "cache" / "catalog"

    @property
    def resolved_audit_repo(self) -> Path:
        return self.audit_repo or self.home / "audit"

    @property
    def listens_beyond_loopback(self) -> bool:
        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return True
