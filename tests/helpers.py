"""Small builders shared by the tests."""

from __future__ import annotations

import os
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from chiffon.gitrepo import Identity

ALICE = Identity("Alice Admin", "alice@example.com")


def intent_yaml(
    name: str,
    playbook: str = "ansible/playbooks/kuma-deployment.yml",
    *,
    comment: str = "",
    port: int = 3001,
    extra: str = "",
) -> str:
    """A small valid intent; ``comment`` and ``port`` let tests change text with or without the spec."""
    return (
        textwrap.dedent(f"""\
        # {comment or "an example intent"}
        apiVersion: chiffon.dev/v1alpha1
        kind: DeploymentIntent
        metadata:
          name: {name}
          labels: {{service: {name}}}
        spec:
          steps:
            - name: deploy
              playbook: {playbook}
          limit: localhost
          vars: {{port: {port}}}
        """)
        + extra
    )


# A billion-laughs document: nine levels of nine aliases.
BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


POSTGRES_URL = os.environ.get(
    "CHIFFON_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def throwaway_database(kind: str) -> Iterator[str]:
    """A PostgreSQL database of its own (``chiffon_<kind>_<hex>``), dropped afterwards.

    For tests that start Chiffon processes: they connect by URL, so a schema
    of the test's own is not enough. Yields the database's asyncpg URL.
    """
    admin = POSTGRES_URL.replace("+asyncpg", "")
    name = f"chiffon_{kind}_{uuid.uuid4().hex[:8]}"
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        subprocess.run(
            ["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
            check=False,
            capture_output=True,
        )
