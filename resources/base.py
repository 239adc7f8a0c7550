"""Shared building blocks for every Chiffon resource and message.

Field names are snake_case in Python and camelCase on the wire, like the
Kubernetes API. Every model forbids unknown fields so a typo in a YAML file is
reported with its path instead of being silently ignored.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "chiffon.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CAMEL_WORD = re.compile(r"^[A-Z][A-Za-z0-9]*$")

MAX_VARS_DEPTH = 32
MAX_VARS_ITEMS = 10_000


class Model(BaseModel):
    """Base for all resources: camelCase aliases, unknown fields rejected, numbers finite.

    NaN and infinity are refused like any other non-JSON value: JSON cannot hold
    them (pydantic would write ``null``, which reads back as something else or
    not at all), and an infinite duration or interval overflows the date
    arithmetic of whoever receives it.
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        validate_assignment=True,
        allow_inf_nan=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready, camelCase form used in YAML, the API and messages."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def validate_dns1123_label(value: str) -> str:
    if len(value) > 63:
        raise ValueError(f"must be at most 63 characters (got {len(value)})")
    if not _DNS1123_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def validate_camel_word(value: str) -> str:
    if not _CAMEL_WORD.match(value) or len(value) > 128:
        raise ValueError(f"{value!r} must be one CamelCase word such as 'AwaitingApproval'")
    return value


def parse_duration(value: str) -> timedelta:
    """Parse a Go-style duration such as '90s', '5m' or '1h30m'."""
    match = _DURATION.match(value.strip()) if value else None
    if not value or match is None or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration: write it like '30s', '5m', '1h' or '1h30m'")
    hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


#: The longest look back a query accepts (ten years).
MAX_WINDOW = timedelta(days=3660)
_DAYS = re.compile(r"(?:(\d+)d)?(.*)")


def parse_window(text: str) -> timedelta:
    """``30d``, ``24h``, ``30m``, ``1d12h``, ``90s``: how far back a query looks (days allowed)."""
    problem = ValueError(f"{text!r} is not a duration: write it like '30d', '24h' or '30m'")
    match = _DAYS.fullmatch(text.strip())
    if match is None or not text.strip():
        raise problem
    days, rest = match.groups()
    try:
        window = timedelta(days=int(days or 0)) + (parse_duration(rest) if rest else timedelta())
    except (ValueError, OverflowError):
        raise problem from None
    if window <= timedelta():
        raise problem
    if window > MAX_WINDOW:
        raise ValueError(f"{text!r} is too long; the most is {MAX_WINDOW.days}d")
    return window


def _validate_duration(value: str) -> str:
    parse_duration(value)
    return value


def validate_repo_path(value: str) -> str:
    """A path inside the homelab-infra repository, checked lexically.

    This is the pure half of the check; whoever opens the file also refuses
    symlinks that resolve outside the repository.
    """
    if not value or len(value) > 1024:
        raise ValueError("must be a non-empty path of at most 1024 characters")
    if "\x00" in value or "\\" in value:
        raise ValueError(f"{value!r} contains a NUL or backslash; use '/' separated paths")
    if value.startswith(("/", "~")):
        raise ValueError(f"{value!r} must be relative to the homelab-infra repository, not absolute")
    # Split by hand, not with PurePosixPath: this runs for every step of every intent read
    # from the database, and the lexical rule needs no more than the parts.
    depth = 0
    for part in value.split("/"):
        if part in ("", "."):
            continue
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise ValueError(f"{value!r} escapes the homelab-infra repository")
    return value


def validate_no_nul(value: str) -> str:
    """Refuse text holding a NUL character, which PostgreSQL cannot store in text or JSON.

    Found while fuzzing (tests/fuzz): an intent with ``"\\0"`` in its vars was committed to git,
    then failed every sync of the intents repo on PostgreSQL, good files included.
    """
    if "\x00" in value:
        raise ValueError(f"{value[:40]!r} holds a NUL character (\\0), which cannot be stored")
    return value


def without_nul(value: str) -> str:
    """Text as it can be stored: each NUL character becomes U+FFFD, the replacement character."""
    return value.replace("\x00", "\ufffd")


def validate_plain_data(value: Any, _depth: int = 0, _budget: list[int] | None = None) -> Any:
    """Accept only JSON-like data: maps with string keys, lists, str, int, float, bool, null."""
    budget = _budget if _budget is not None else [MAX_VARS_ITEMS]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"vars hold more than {MAX_VARS_ITEMS} values")
    if _depth > MAX_VARS_DEPTH:
        raise ValueError(f"vars are nested deeper than {MAX_VARS_DEPTH} levels")
    if isinstance(value, str):
        return validate_no_nul(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("vars must not hold NaN or infinity")
        return value
    if isinstance(value, list):
        return [validate_plain_data(item, _depth + 1, budget) for item in value]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"vars keys must be strings (got {type(key).__name__} {key!r})")
            validate_no_nul(key)
        return {key: validate_plain_data(item, _depth + 1, budget) for key, item in value.items()}
    raise ValueError(f"vars must be plain data (got {type(value).__name__})")


def _validate_plain_mapping(value: dict[str, Any]) -> dict[str, Any]:
    result = validate_plain_data(value)
    assert isinstance(result, dict)
    return result


# The JSON Schema carries the patterns too, so editors (yaml-language-server) flag
# mistakes as you type; the validators give the friendlier messages at runtime.
DNS1123Name = Annotated[
    str,
    AfterValidator(validate_dns1123_label),
    Field(json_schema_extra={"pattern": _DNS1123_LABEL.pattern, "maxLength": 63}),
]
CamelWord = Annotated[str, AfterValidator(validate_camel_word)]
# Text a person wrote (a file, a request): one with a NUL character is refused.
PlainText = Annotated[str, AfterValidator(validate_no_nul)]
# Text a machine reports (ansible output, an agent's labels): a NUL is replaced, never refused,
# so one odd byte in a playbook's output does not cost the whole report.
StoredText = Annotated[str, AfterValidator(without_nul)]
Duration = Annotated[
    str, AfterValidator(_validate_duration), Field(json_schema_extra={"pattern": _DURATION.pattern})
]
RepoPath = Annotated[
    str,
    AfterValidator(validate_repo_path),
    Field(json_schema_extra={"pattern": r"^(?!/)(?!~)[^\\\x00]+$", "maxLength": 1024}),
]
PlainVars = Annotated[dict[str, Any], AfterValidator(_validate_plain_mapping)]
