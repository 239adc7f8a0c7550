"""Object metadata shared by every resource kind (the Kubernetes ObjectMeta subset)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from chiffon.resources.base import DNS1123Name, Model, PlainText

_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_ANNOTATIONS_BYTES = 256 * 1024

#: Fields the server sets; they are refused in files and stripped by `chiffonctl apply`.
SERVER_SET_METADATA = ("generation", "uid", "creationTimestamp")


def validate_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix)):
        raise ValueError(f"label key {key!r} has an invalid prefix")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(
            f"label key {key!r} must be at most 63 letters, digits, '-', '_' or '.', "
            "optionally after a DNS prefix and '/'"
        )
    return key


def validate_label_value(value: str) -> str:
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        raise ValueError(
            f"label value {value!r} must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return value


LabelKey = Annotated[str, AfterValidator(validate_label_key)]
LabelValue = Annotated[str, AfterValidator(validate_label_value)]


class ObjectMeta(Model):
    name: DNS1123Name
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    annotations: dict[LabelKey, PlainText] = Field(default_factory=dict)
    # Server-set: never read from git, always present in API answers.
    generation: int | None = Field(default=None, ge=1)
    uid: str | None = None
    creation_timestamp: datetime | None = None

    @field_validator("annotations")
    @classmethod
    def _annotations_fit(cls, value: dict[str, str]) -> dict[str, str]:
        size = sum(len(k) + len(v) for k, v in value.items())
        if size > MAX_ANNOTATIONS_BYTES:
            raise ValueError(f"annotations hold {size} bytes; the limit is {MAX_ANNOTATIONS_BYTES}")
        return value
