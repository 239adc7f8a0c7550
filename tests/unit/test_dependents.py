"""The controller's index of which intents wait on which, learnt from reconcile passes."""

from __future__ import annotations

from chiffon.controllers.controller import Dependents


def test_dependents_follow_each_intents_latest_spec() -> None:
    index = Dependents()
    index.track("kuma-config", ["kuma"])
    index.track("portals", ["kuma", "proxy"])
    assert index.of("kuma") == ["kuma-config", "portals"]
    assert index.of("proxy") == ["portals"]

    index.track("portals", ["proxy"])  # its spec no longer depends on kuma
    assert index.of("kuma") == ["kuma-config"]

    index.track("kuma-config", [])  # deleted, or no dependencies any more
    assert index.of("kuma") == []
    assert index.of("proxy") == ["portals"]
    assert index.of("unknown") == []
