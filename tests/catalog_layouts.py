"""Homelab-infra layouts for the catalog's tests and bench, written as real files.

* :func:`write_ansible_nas` — the ansible-nas style: one site playbook
  (``nas.yml``) listing many roles, each with ``tags: [app]`` and
  ``when: (app_enabled | default(False))``, roles whose defaults carry
  ``app_enabled: false`` and ``app_image_name``, FQCN modules
  (``community.docker.docker_container``), and the documentation of each app
  in ``website/docs/applications/<category>/<app>.md``, not beside the role.
  :data:`NAS_QUERIES` asks for each app by what it does, never by its name.
* :func:`write_fqcn_layout` — playbooks in nested folders, a collection's
  role named by FQCN, ``docker_compose_v2``, a compose stack, an INI
  inventory, and files that are not playbooks or cannot be read.
"""

from __future__ import annotations

from pathlib import Path

# app, category, image, what its documentation says
NAS_APPS: list[tuple[str, str, str, str]] = [
    ("jellyfin", "media-serving", "lscr.io/linuxserver/jellyfin",
     "Jellyfin is a Free Software Media System that puts you in control of managing and streaming your "
     "films, series and music to any device in the house."),
    ("heimdall", "dashboards", "lscr.io/linuxserver/heimdall",
     "Heimdall is an elegant start page: one place with a tile for every web application you run, so you "
     "never have to remember their addresses."),
    ("transmission", "downloading", "lscr.io/linuxserver/transmission",
     "Transmission is a fast BitTorrent client with a web interface; downloads land in the NAS's download "
     "share."),
    ("nextcloud", "file-sharing", "nextcloud",
     "Nextcloud gives you file hosting under your own control: sync and share files, calendars and "
     "contacts from every device, like a private Dropbox or Google Drive."),
    ("gitea", "development", "gitea/gitea",
     "Gitea is a painless self-hosted Git service: repositories, pull requests, issues and a code review "
     "web UI, much like GitHub."),
    ("homeassistant", "home-automation", "ghcr.io/home-assistant/home-assistant",
     "Home Assistant is open source home automation that puts local control and privacy first: lights, "
     "thermostats, switches and sensors in one place."),
    ("syncthing", "file-sharing", "lscr.io/linuxserver/syncthing",
     "Syncthing is a continuous file synchronization program. It keeps folders identical between two or "
     "more computers in real time, peer to peer."),
    ("miniflux", "news", "miniflux/miniflux",
     "Miniflux is a minimalist and opinionated feed reader for RSS and Atom subscriptions to blogs and news "
     "sites."),
    ("portainer", "management", "portainer/portainer-ce",
     "Portainer is a lightweight management UI for your Docker host: start, stop and inspect containers, "
     "images, volumes and networks from the browser."),
    ("paperless_ng", "documents", "ghcr.io/paperless-ngx/paperless-ngx",
     "Paperless scans, indexes and archives all your paper documents, with OCR, so letters and invoices "
     "become searchable PDFs."),
    ("vaultwarden", "security", "vaultwarden/server",
     "Vaultwarden is a Bitwarden-compatible password manager server: store logins, secure notes and "
     "credentials, shared with the family."),
    ("calibre", "books", "lscr.io/linuxserver/calibre-web",
     "Calibre-Web is a web app for browsing, reading and downloading eBooks stored in a Calibre library."),
    ("netdata", "monitoring", "netdata/netdata",
     "Netdata collects real-time performance and health metrics of the server - CPU, disks, network - "
     "with dashboards and alarms."),
    ("mosquitto", "home-automation", "eclipse-mosquitto",
     "Eclipse Mosquitto is a lightweight MQTT message broker for IoT devices and sensors to publish and "
     "subscribe to messages."),
    ("duplicati", "backup", "lscr.io/linuxserver/duplicati",
     "Duplicati stores encrypted, incremental, compressed backups of your shares on cloud storage services "
     "and remote file servers."),
    ("pihole", "networking", "pihole/pihole",
     "Pi-hole is a DNS sinkhole that protects all devices on the network from unwanted content such as "
     "advertisements and trackers, without installing any client-side software."),
]  # fmt: skip

#: A request in words, and the role that answers it (never named in the request).
NAS_QUERIES: list[tuple[str, str]] = [
    ("stream my movies and tv shows to the living room", "jellyfin"),
    ("a start page with links to all my web apps", "heimdall"),
    ("download torrents", "transmission"),
    ("self-hosted alternative to dropbox", "nextcloud"),
    ("host my own git repositories", "gitea"),
    ("control smart lights and thermostats at home", "homeassistant"),
    ("keep folders synchronised between my laptops", "syncthing"),
    ("read rss feeds of blogs", "miniflux"),
    ("web interface to manage docker containers", "portainer"),
    ("scan and archive paper letters with ocr", "paperless_ng"),
    ("password manager for the family", "vaultwarden"),
    ("library for my ebooks", "calibre"),
    ("cpu and disk performance metrics with alarms", "netdata"),
    ("mqtt broker for iot sensors", "mosquitto"),
    ("encrypted backups to the cloud", "duplicati"),
    ("block ads on the whole network", "pihole"),
]


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _title(app: str) -> str:
    return app.replace("_", " ").title()


def write_ansible_nas(root: Path) -> Path:
    """An ansible-nas-like repository at ``root``; returns ``root``."""
    roles = [
        "    - role: ansible-nas-general\n      tags:\n        - ansible-nas-general\n        - ansible-nas\n"
    ]
    for app, category, image, doc in NAS_APPS:
        title = _title(app)
        roles.append(
            f"    - role: {app}\n      tags:\n        - {app}\n      when: ({app}_enabled | default(False))\n"
        )
        _write(
            root,
            f"roles/{app}/defaults/main.yml",
            f"---\n{app}_enabled: false\n{app}_available_externally: false\n"
            f'{app}_data_directory: "{{{{ docker_home }}}}/{app}"\n'
            f"{app}_image_name: {image}\n{app}_image_version: latest\n"
            f'{app}_hostname: "{app.replace("_", "")}"\n{app}_port: "8{len(app):03d}"\n',
        )
        _write(
            root,
            f"roles/{app}/tasks/main.yml",
            f"""---
- name: Start {title}
  when: {app}_enabled is true
  block:
    - name: Create {title} Directories
      ansible.builtin.file:
        path: "{{{{ item }}}}"
        state: directory
        mode: "0755"
      with_items:
        - "{{{{ {app}_data_directory }}}}"

    - name: {title} Docker Container
      community.docker.docker_container:
        name: "{app}"
        image: "{{{{ {app}_image_name }}}}:{{{{ {app}_image_version }}}}"
        pull: true
        restart_policy: unless-stopped
        ports:
          - "{{{{ {app}_port }}}}:80"

- name: Stop {title}
  when: {app}_enabled is false
  block:
    - name: Stop {title}
      community.docker.docker_container:
        name: "{app}"
        state: absent
""",
        )
        _write(
            root,
            f"website/docs/applications/{category}/{app}.md",
            f"# {title}\n\n{doc}\n\nEnable it with `{app}_enabled: true`.\n",
        )
    _write(
        root,
        "roles/ansible-nas-general/tasks/main.yml",
        "---\n- name: Set the hostname\n  ansible.builtin.hostname:\n"
        '    name: "{{ ansible_nas_hostname }}"\n',
    )
    _write(root, "nas.yml", "---\n- name: Ansible-NAS\n  hosts: all\n  roles:\n" + "".join(roles))
    _write(root, "inventories/sample/inventory", "[nas]\nansible-nas ansible_host=192.168.1.10\n")
    _write(root, "inventories/sample/group_vars/nas.yml", "---\njellyfin_enabled: true\n")
    _write(
        root,
        "README.md",
        "# Ansible-NAS\n\nA Network Attached Storage in Ansible: many apps, one playbook.\n",
    )
    return root


def write_fqcn_layout(root: Path) -> Path:
    """Playbooks in nested folders, a collection role by FQCN, and files that are not playbooks."""
    _write(
        root,
        "collections/ansible_collections/homelab/apps/roles/gotify/tasks/main.yml",
        """---
- name: Render the gotify compose file
  ansible.builtin.template:
    src: compose.yml.j2
    dest: /opt/gotify/compose.yml
    mode: "0644"
- name: Start the gotify stack
  community.docker.docker_compose_v2:
    project_src: /opt/gotify
  tags: [gotify, deploy]
""",
    )
    _write(
        root,
        "collections/ansible_collections/homelab/apps/roles/gotify/defaults/main.yml",
        "---\ngotify_image: gotify/server:2.4\n",
    )
    _write(
        root,
        "collections/ansible_collections/homelab/apps/roles/gotify/meta/main.yml",
        "---\ngalaxy_info:\n  description: Gotify push notification server.\n"
        "  galaxy_tags: [notifications]\n",
    )
    _write(
        root,
        "playbooks/notify/gotify.yml",
        """---
# Gotify, a server for sending and receiving push notifications.
- name: Deploy Gotify
  hosts: notify
  roles:
    - role: homelab.apps.gotify
""",
    )
    _write(
        root,
        "deploy/all.yml",
        "---\n- name: Everything\n  ansible.builtin.import_playbook: ../playbooks/notify/gotify.yml\n",
    )
    _write(
        root,
        "stacks/vaultwarden/compose.yaml",
        "# Vaultwarden password manager.\nservices:\n  vaultwarden:\n    image: vaultwarden/server:1.30.5\n"
        "    ports: ['8080:80']\n",
    )
    _write(root, "hosts.ini", "[notify]\nnotify-1\n\n[web:children]\nnotify\n")
    # Not playbooks: a task list, a vars mapping, group_vars; and files that cannot be read.
    _write(
        root,
        "playbooks/notify/tasks.yml",
        "---\n- name: Just a task\n  ansible.builtin.debug:\n    msg: hi\n",
    )
    _write(root, "vars/settings.yml", "---\ngotify_port: 8080\n")
    _write(root, "group_vars/all.yml", "---\n- hosts: all\n")
    _write(root, "playbooks/broken.yml", "---\n- hosts: all\n  tasks: [\n")
    _write(
        root,
        "playbooks/bomb.yml",
        "a: &a [x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        + "".join(
            f"{chr(99 + i)}: &{chr(99 + i)} [" + ", ".join([f"*{chr(98 + i)}"] * 9) + "]\n" for i in range(8)
        ),
    )
    (root / "playbooks" / "latin1.yml").write_bytes(b"---\n- hosts: all\n  name: caf\xe9\n")
    return root
