"""Small builders shared by the tests."""

from __future__ import annotations

import textwrap

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
