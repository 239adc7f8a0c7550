"""Discovery over real layouts: the bundled example, ansible-nas style, FQCN and collections, bad files.

Pure file reading, no model: each row writes (or copies) a layout, discovers
it, and checks the entries a person would expect to find.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chiffon.agents.catalog.discovery import Entry, EntryKind, discover, fingerprint, service_name
from tests.catalog_layouts import NAS_APPS, write_ansible_nas, write_fqcn_layout

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "homelab-infra"


def copy_example(root: Path) -> Path:
    shutil.copytree(EXAMPLE, root, dirs_exist_ok=True)
    return root


def by_id(entries: list[Entry]) -> dict[str, Entry]:
    return {entry.id: entry for entry in entries}


# (layout, entry id, what it must say)
CASES: list[tuple[str, Callable[[Path], Path], str, dict[str, Any]]] = [
    (
        "example-playbook",
        copy_example,
        "playbook:ansible/playbooks/kuma-deployment.yml",
        {
            "service": "uptime-kuma",
            "playbook": "ansible/playbooks/kuma-deployment.yml",
            "role": None,
            "tags": {"kuma", "deploy", "health"},
            "images": {"louislam/uptime-kuma", "ghcr.io/bigboot/autokuma"},
            "modules": {"ansible.builtin.template", "ansible.builtin.command"},
            "text": [
                "Deploy Uptime Kuma",
                "status page",
                "uptime monitoring",
                "Render the uptime-kuma compose file",
            ],
        },
    ),
    (
        "example-config-playbook",
        copy_example,
        "playbook:ansible/playbooks/kuma-config-update.yml",
        {
            "service": "uptime-kuma",
            "tags": {"kuma", "config"},
            "text": ["Render one monitor file per portal"],
            "not_text": ["Render the uptime-kuma compose file"],
        },
    ),  # tasks_from: monitors, not main
    (
        "example-role",
        copy_example,
        "role:ansible/roles/uptime_kuma",
        {
            "service": "uptime-kuma",
            "role": "uptime_kuma",
            "playbook": None,
            "tags": {"kuma", "monitoring", "uptime"},
            "text": ["AutoKuma"],
        },
    ),
    (
        "example-compose",
        copy_example,
        "compose-stack:compose/uptime-kuma/docker-compose.yml",
        {
            "service": "uptime-kuma",
            "role": None,
            "playbook": None,
            "images": {"louislam/uptime-kuma:1.23.16", "ghcr.io/bigboot/autokuma:0.8.0"},
        },
    ),
    ("example-site", copy_example, "playbook:ansible/playbooks/site.yml", {"service": "site"}),
    (
        "nas-site-role",
        write_ansible_nas,
        "role:roles/jellyfin",
        {
            "service": "jellyfin",
            "playbook": "nas.yml",
            "role": None,
            "run_tags": ("jellyfin",),
            "run_vars": {"jellyfin_enabled": True},
            "images": {"lscr.io/linuxserver/jellyfin"},
            "modules": {"community.docker.docker_container", "ansible.builtin.file"},
            "text": [
                "streaming your films",
                "Jellyfin Docker Container",
                "jellyfin_image_name",
                "docker_container",
            ],
        },
    ),
    (
        "nas-underscore-role",
        write_ansible_nas,
        "role:roles/paperless_ng",
        {
            "service": "paperless-ng",
            "run_vars": {"paperless_ng_enabled": True},
            "run_tags": ("paperless_ng",),
        },
    ),
    (
        "nas-general-role",
        write_ansible_nas,
        "role:roles/ansible-nas-general",
        {"playbook": "nas.yml", "run_tags": ("ansible-nas-general", "ansible-nas"), "run_vars": {}},
    ),
    ("nas-site-playbook", write_ansible_nas, "playbook:nas.yml", {"service": "nas", "text": ["jellyfin"]}),
    (
        "fqcn-collection-role",
        write_fqcn_layout,
        "role:collections/ansible_collections/homelab/apps/roles/gotify",
        {
            "service": "gotify",
            "role": "homelab.apps.gotify",
            "aliases": ("homelab-apps-gotify",),
            "modules": {"community.docker.docker_compose_v2"},
            "images": {"gotify/server:2.4"},
            "text": ["push notification", "docker_compose_v2"],
        },
    ),
    (
        "fqcn-nested-playbook",
        write_fqcn_layout,
        "playbook:playbooks/notify/gotify.yml",
        {"service": "gotify", "playbook": "playbooks/notify/gotify.yml", "text": ["Start the gotify stack"]},
    ),
    ("fqcn-import-playbook", write_fqcn_layout, "playbook:deploy/all.yml", {"service": "all"}),
    (
        "compose-yaml-name",
        write_fqcn_layout,
        "compose-stack:stacks/vaultwarden/compose.yaml",
        {"service": "vaultwarden", "text": ["password manager"]},
    ),
]


@pytest.mark.parametrize(("layout", "entry_id", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_entries(tmp_path: Path, layout: Callable[[Path], Path], entry_id: str, want: dict[str, Any]) -> None:
    entries = by_id(discover(layout(tmp_path)).entries)
    assert entry_id in entries, sorted(entries)
    entry = entries[entry_id]
    for key, value in want.items():
        if key == "text":
            for fragment in value:
                assert fragment in entry.text, f"{fragment!r} not in {entry.text!r}"
        elif key == "not_text":
            for fragment in value:
                assert fragment not in entry.text
        elif isinstance(value, set):
            actual = [str(item) for item in getattr(entry, key)]
            for item in value:  # images may carry a tag: a prefix is enough
                assert any(a == item or a.startswith(item + ":") for a in actual), (key, item, actual)
        else:
            assert getattr(entry, key) == value, (key, getattr(entry, key))
    assert entry.summary and len(entry.text) <= 900


def test_example_finds_every_playbook_role_stack_and_the_inventory(tmp_path: Path) -> None:
    found = discover(copy_example(tmp_path))
    kinds = {kind: sorted(e.name for e in found.entries if e.kind is kind) for kind in EntryKind}
    assert kinds[EntryKind.PLAYBOOK] == [
        "kuma-config-update",
        "kuma-deployment",
        "legacy-backup",
        "ollama-deployment",
        "pihole-deployment",
        "portainer-deployment",
        "reverse-proxy",
        "site",
        "system-update",
        "traefik-deployment",
    ]
    assert kinds[EntryKind.ROLE] == [
        "common",
        "ollama",
        "pihole",
        "portainer",
        "reverse_proxy",
        "traefik",
        "uptime_kuma",
    ]
    assert kinds[EntryKind.COMPOSE] == ["ollama", "uptime-kuma"]
    [inventory] = found.inventories
    assert inventory.path == "ansible/inventory/hosts.yml" and {"infra", "proxmox", "desktops", "lab"} <= set(
        inventory.groups
    )
    assert found.warnings == []


def test_ansible_nas_every_app_is_an_entry_run_through_the_site_playbook(tmp_path: Path) -> None:
    found = discover(write_ansible_nas(tmp_path))
    roles = {e.name: e for e in found.entries if e.kind is EntryKind.ROLE}
    assert set(roles) == {app for app, *_ in NAS_APPS} | {"ansible-nas-general"}
    for app, *_ in NAS_APPS:
        assert roles[app].target == f"nas.yml --tags {app}"
    assert [i.path for i in found.inventories] == ["inventories/sample/inventory"]


def test_unreadable_files_are_warnings_and_the_rest_is_found(tmp_path: Path) -> None:
    found = discover(write_fqcn_layout(tmp_path))
    warnings = "\n".join(found.warnings)
    assert "playbooks/broken.yml:4: invalid YAML" in warnings
    assert "playbooks/bomb.yml" in warnings and "aliases" in warnings
    assert "playbooks/latin1.yml: not UTF-8" in warnings
    ids = {e.id for e in found.entries}
    # A task list, a vars file and group_vars are not playbooks.
    assert not ids & {
        "playbook:playbooks/notify/tasks.yml",
        "playbook:vars/settings.yml",
        "playbook:group_vars/all.yml",
    }
    assert found.inventories[0].groups == ("notify", "web")


def test_discovery_survives_the_wire(tmp_path: Path) -> None:
    from chiffon.agents.catalog.discovery import Discovery

    found = discover(write_ansible_nas(tmp_path))
    assert Discovery.from_wire(found.to_wire()) == found


def test_fingerprint_moves_with_any_file_change(tmp_path: Path) -> None:
    root = copy_example(tmp_path)
    before = fingerprint(root)
    assert fingerprint(root) == before
    (root / "ansible/playbooks/new.yml").write_text("- hosts: all\n")
    assert fingerprint(root) != before


@pytest.mark.parametrize(
    ("text", "want"), [("Uptime_Kuma", "uptime-kuma"), ("paperless_ng", "paperless-ng"), ("  A b ", "a-b")]
)
def test_service_names(text: str, want: str) -> None:
    assert service_name(text) == want


def test_importing_the_catalog_does_not_import_torch() -> None:
    code = (
        "import sys, chiffon.agents.catalog, chiffon.agents.catalog.index, chiffon.agents.catalog.resolver\n"
        "import chiffon.api.routes.catalog, chiffon.api.ctl\n"
        "heavy = ('torch', 'sentence_transformers', 'faiss', 'transformers')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
