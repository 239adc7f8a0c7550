"""What a check finds, before it is stored: :class:`Finding`, and its stable fingerprint.

A finding is identified by what it is about, not where it currently sits:
the fingerprint hashes the category, the file, the task's name (lower-cased;
the flagged line's text when there is no name) and, for identical twins in
one file, their order. Moving a task, or fixing the casing of its name, keeps
the fingerprint, so a rescan neither duplicates a suggestion nor reopens one
that was dismissed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = ["LINT", "RUN", "STATIC", "Finding", "with_fingerprints"]

LINT = "ansible-lint"
STATIC = "static"
RUN = "run"


@dataclass(frozen=True)
class Finding:
    source: str  # ansible-lint | static | run
    rule: str  # the ansible-lint rule id, or our own: not-idempotent, missing-handler, ...
    file: str
    line: int | None
    reasoning: str
    key: str  # what the finding is about: the task's name, else the flagged line's text
    patch: str | None = None
    fingerprint: str = ""

    @property
    def category(self) -> str:
        return f"{self.source}/{self.rule}"


def split_category(category: str) -> tuple[str, str]:
    source, _, rule = category.partition("/")
    return (source, rule) if rule else ("", source)


def with_fingerprints(findings: Iterable[Finding]) -> list[Finding]:
    """The findings with fingerprints; twins (same category, file and key) are numbered in line order."""
    ordered = sorted(findings, key=lambda f: (f.category, f.file, f.line or 0))
    seen: Counter[tuple[str, str, str]] = Counter()
    out = []
    for finding in ordered:
        identity = (finding.category, finding.file, " ".join(finding.key.lower().split()))
        ordinal = seen[identity]
        seen[identity] += 1
        material = "\0".join([*identity, str(ordinal)]).encode()
        out.append(replace(finding, fingerprint=hashlib.sha256(material).hexdigest()))
    return out
