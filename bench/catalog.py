"""The playbook catalog at scale: 1,000 generated playbooks; cold index, warm start, query latency, quality.

    .venv/bin/python -m bench.catalog [--quick] [--playbooks N] [--queries N] [--json PATH]

* **Repository.** ``--playbooks`` (1,000) playbooks in nested folders of a
  generated homelab-infra repo, each for one of ~100 services with one of
  ten jobs (deploy, backup, update, configure, ...): a header comment, a play
  name, four to seven tasks with FQCN modules, and the service's image.
* **Cold index** (target ≤ 90 s): an empty cache dir, a process whose model
  is not loaded yet — discovery, loading all-MiniLM-L6-v2, embedding every
  entry (text and summary), the FAISS index. Its parts are reported too.
* **Warm start** (target ≤ 2 s): a fresh Python process (as after a restart)
  creates the catalog on the same cache dir and makes the index ready: it
  fingerprints the repo, reads the cached discovery and embeddings, builds
  FAISS, embeds nothing (checked). Loading the model, needed by the first
  query only, is reported beside it.
* **Query latency** (target p50 ≤ 25 ms): ``--queries`` distinct requests
  (no two alike, so the per-catalog answer cache never hits), each timed
  around ``Catalog.search``: the fingerprint check (every 5 s), the query's
  embedding, FAISS and the ranking. p50, p95 and max. After each, the model
  embedding the same text alone is timed too: the floor ``bench.suite``
  compares the search with.
* **Match quality**: the labelled requests of ``tests/catalog_layouts.py``
  against the ansible-nas-like repo (one site playbook, one role per app,
  docs in ``website/``), each asking for an app by what it does: top-1 and
  top-3 accuracy; and the bundled example's "uptime monitoring" finding the
  Kuma playbook first.

Results go to ``bench/results/catalog-latest.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from chiffon.agents.catalog.index import Catalog  # noqa: E402
from tests.catalog_layouts import NAS_QUERIES, write_ansible_nas  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "catalog-latest.json"
TARGETS = {"cold_index_s": 90.0, "warm_start_s": 2.0, "query_p50_ms": 25.0}

# service, what it is, image
SERVICES = [
    ("jellyfin", "media server for films and series", "jellyfin/jellyfin"),
    ("plex", "media streaming server", "plexinc/pms-docker"),
    ("sonarr", "tv series download manager", "linuxserver/sonarr"),
    ("radarr", "movie download manager", "linuxserver/radarr"),
    ("lidarr", "music collection manager", "linuxserver/lidarr"),
    ("prowlarr", "indexer manager for the arr apps", "linuxserver/prowlarr"),
    ("qbittorrent", "bittorrent client", "linuxserver/qbittorrent"),
    ("nextcloud", "file sync and share cloud", "nextcloud"),
    ("syncthing", "peer to peer folder synchronisation", "syncthing/syncthing"),
    ("immich", "photo and video backup", "ghcr.io/immich-app/immich-server"),
    ("photoprism", "photo library with face recognition", "photoprism/photoprism"),
    ("paperless", "document archive with ocr", "ghcr.io/paperless-ngx/paperless-ngx"),
    ("vaultwarden", "password manager", "vaultwarden/server"),
    ("authelia", "single sign-on and two-factor portal", "authelia/authelia"),
    ("keycloak", "identity and access management", "quay.io/keycloak/keycloak"),
    ("traefik", "reverse proxy with automatic certificates", "traefik"),
    ("caddy", "web server and reverse proxy", "caddy"),
    ("nginx", "web server", "nginx"),
    ("pihole", "network-wide ad blocking dns", "pihole/pihole"),
    ("adguard", "dns ad blocker", "adguard/adguardhome"),
    ("unbound", "recursive dns resolver", "mvance/unbound"),
    ("wireguard", "vpn server", "linuxserver/wireguard"),
    ("tailscale", "mesh vpn", "tailscale/tailscale"),
    ("homeassistant", "home automation hub", "ghcr.io/home-assistant/home-assistant"),
    ("mosquitto", "mqtt broker", "eclipse-mosquitto"),
    ("zigbee2mqtt", "zigbee to mqtt bridge", "koenkk/zigbee2mqtt"),
    ("nodered", "flow-based automation editor", "nodered/node-red"),
    ("esphome", "firmware for esp microcontrollers", "esphome/esphome"),
    ("frigate", "camera nvr with object detection", "ghcr.io/blakeblackshear/frigate"),
    ("gitea", "self-hosted git service", "gitea/gitea"),
    ("forgejo", "git forge", "codeberg.org/forgejo/forgejo"),
    ("drone", "continuous integration server", "drone/drone"),
    ("woodpecker", "ci pipelines", "woodpeckerci/woodpecker-server"),
    ("registry", "private container registry", "registry"),
    ("harbor", "container registry with scanning", "goharbor/harbor-core"),
    ("portainer", "docker management ui", "portainer/portainer-ce"),
    ("watchtower", "automatic container image updates", "containrrr/watchtower"),
    ("prometheus", "metrics collection and alerting", "prom/prometheus"),
    ("grafana", "dashboards for metrics", "grafana/grafana"),
    ("loki", "log aggregation", "grafana/loki"),
    ("alertmanager", "alert routing", "prom/alertmanager"),
    ("node-exporter", "host metrics exporter", "prom/node-exporter"),
    ("uptime-kuma", "uptime monitoring status page", "louislam/uptime-kuma"),
    ("netdata", "real-time server monitoring", "netdata/netdata"),
    ("gotify", "push notifications", "gotify/server"),
    ("ntfy", "notification topics over http", "binwiederhier/ntfy"),
    ("postgres", "relational database", "postgres"),
    ("mariadb", "mysql-compatible database", "mariadb"),
    ("redis", "in-memory key value store", "redis"),
    ("minio", "s3-compatible object storage", "minio/minio"),
    ("restic", "encrypted backups", "restic/restic"),
    ("borg", "deduplicating backups", "b3vis/borgmatic"),
    ("duplicati", "cloud backup", "linuxserver/duplicati"),
    ("ollama", "local large language models on the gpu", "ollama/ollama"),
    ("open-webui", "chat interface for language models", "ghcr.io/open-webui/open-webui"),
    ("stable-diffusion", "image generation on the gpu", "universonic/stable-diffusion-webui"),
    ("whisper", "speech to text transcription", "onerahmet/openai-whisper-asr-webservice"),
    ("miniflux", "rss feed reader", "miniflux/miniflux"),
    ("freshrss", "rss aggregator", "freshrss/freshrss"),
    ("wallabag", "read it later", "wallabag/wallabag"),
    ("bookstack", "wiki and documentation", "linuxserver/bookstack"),
    ("outline", "team knowledge base", "outlinewiki/outline"),
    ("hedgedoc", "collaborative markdown notes", "quay.io/hedgedoc/hedgedoc"),
    ("calibre-web", "ebook library", "linuxserver/calibre-web"),
    ("audiobookshelf", "audiobooks and podcasts server", "ghcr.io/advplyr/audiobookshelf"),
    ("navidrome", "music streaming server", "deluan/navidrome"),
    ("mealie", "recipe manager", "ghcr.io/mealie-recipes/mealie"),
    ("firefly", "personal finance manager", "fireflyiii/core"),
    ("actual", "budgeting app", "actualbudget/actual-server"),
    ("homepage", "dashboard of services", "ghcr.io/gethomepage/homepage"),
    ("heimdall", "application start page", "linuxserver/heimdall"),
    ("matrix", "chat server", "matrixdotorg/synapse"),
    ("mastodon", "federated social network", "tootsuite/mastodon"),
    ("jitsi", "video conferencing", "jitsi/web"),
    ("code-server", "vs code in the browser", "codercom/code-server"),
    ("guacamole", "remote desktop gateway", "guacamole/guacamole"),
    ("samba", "windows file shares", "dperson/samba"),
    ("nfs", "nfs exports", "itsthenetwork/nfs-server-alpine"),
    ("ups", "ups power monitoring with nut", "instantlinux/nut-upsd"),
    ("scrutiny", "hard drive smart monitoring", "ghcr.io/analogj/scrutiny"),
    ("crowdsec", "collaborative intrusion prevention", "crowdsecurity/crowdsec"),
    ("fail2ban", "ban hosts after failed logins", "crazymax/fail2ban"),
    ("vault", "secrets management", "hashicorp/vault"),
    ("step-ca", "private certificate authority", "smallstep/step-ca"),
    ("ddclient", "dynamic dns updates", "linuxserver/ddclient"),
    ("speedtest", "internet speed tracker", "ghcr.io/alexjustesen/speedtest-tracker"),
    ("changedetection", "website change monitoring", "ghcr.io/dgtlmoon/changedetection.io"),
    ("searxng", "private metasearch engine", "searxng/searxng"),
    ("n8n", "workflow automation", "n8nio/n8n"),
    ("kavita", "manga and comics reader", "jvmilazz0/kavita"),
    ("tdarr", "media transcoding automation", "ghcr.io/haveagitgat/tdarr"),
    ("jackett", "torrent indexer proxy", "linuxserver/jackett"),
    ("overseerr", "media request portal", "sctx/overseerr"),
    ("tautulli", "plex usage statistics", "tautulli/tautulli"),
    ("influxdb", "time series database", "influxdb"),
    ("mqtt-explorer", "mqtt topic browser", "smeagolworms4/mqtt-explorer"),
    ("rustdesk", "remote desktop relay", "rustdesk/rustdesk-server"),
    ("unifi", "network controller for access points", "linuxserver/unifi-network-application"),
]
JOBS = [
    (
        "deploy",
        "Deploy {title} ({what}) as a compose stack",
        [
            "Create the {s} folders",
            "Render the {s} compose file",
            "Start the {s} stack",
            "Wait until {s} answers",
        ],
    ),
    (
        "backup",
        "Back up the data of {title} every night",
        [
            "Stop {s} for a consistent copy",
            "Archive the {s} data",
            "Start {s} again",
            "Prune old {s} archives",
        ],
    ),
    (
        "update",
        "Update {title} to a new image version",
        ["Pull the new {s} image", "Recreate the {s} container", "Check the {s} version"],
    ),
    (
        "configure",
        "Configure {title}: render its settings and restart on change",
        ["Render the {s} settings", "Validate the {s} settings", "Restart {s} when its settings change"],
    ),
    ("remove", "Remove {title} and its containers", ["Stop the {s} stack", "Delete the {s} folders"]),
    (
        "restore",
        "Restore {title} from the latest backup",
        ["Find the newest {s} archive", "Unpack the {s} archive", "Restart {s}"],
    ),
    (
        "healthcheck",
        "Check that {title} is healthy",
        ["Query the {s} health endpoint", "Alert when {s} is down"],
    ),
    (
        "migrate",
        "Move {title} to another host",
        ["Copy the {s} data", "Start {s} on the new host", "Stop {s} on the old host"],
    ),
    ("users", "Manage the users of {title}", ["Create the {s} admin user", "Sync {s} users from the list"]),
    (
        "tls",
        "Give {title} a TLS certificate",
        ["Request a certificate for {s}", "Install the {s} certificate"],
    ),
]
MODULES = [
    "ansible.builtin.file",
    "ansible.builtin.template",
    "community.docker.docker_compose_v2",
    "community.docker.docker_container",
    "ansible.builtin.uri",
    "ansible.builtin.copy",
    "ansible.builtin.systemd_service",
    "community.docker.docker_image",
    "ansible.builtin.stat",
]


def generate(root: Path, count: int, seed: int = 7) -> list[tuple[str, str]]:
    """``count`` playbooks under ``root``; returns (service, job) per playbook."""
    rng = random.Random(seed)
    made: list[tuple[str, str]] = []
    pairs = [(service, job) for job in JOBS for service in SERVICES]
    rng.shuffle(pairs)
    for index in range(count):
        (name, what, image), (job, play, tasks) = pairs[index % len(pairs)]
        suffix = "" if index < len(pairs) else f"-{index // len(pairs)}"
        title = name.replace("-", " ").title()
        folder = root / "playbooks" / ("apps" if index % 3 else "ops") / name
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            "---",
            f"# {play.format(title=title, what=what)}.",
            f"- name: {json.dumps(play.format(title=title, what=what))}",
            f"  hosts: {rng.choice(['servers', 'nas', 'all', 'desktops'])}",
            "  gather_facts: false",
            "  vars:",
            f"    {name.replace('-', '_')}_image: {image}:{rng.choice(['latest', '1.2', '2024.5'])}",
            "  tasks:",
        ]
        for task in tasks + rng.sample(["Log the result", "Record the version", "Notify the admin"], k=1):
            module = rng.choice(MODULES)
            lines += [
                f"    - name: {json.dumps(task.format(s=name))}",
                f"      {module}:",
                f"        name: {name}",
            ]
        (folder / f"{job}{suffix}.yml").write_text("\n".join(lines) + "\n")
        made.append((name, job))
    return made


WARM_CHILD = """
import json, sys, time
start = time.perf_counter()
from pathlib import Path
from chiffon.agents.catalog.index import Catalog
catalog = Catalog(Path(sys.argv[1]), Path(sys.argv[2]))
catalog.warm()
ready = time.perf_counter() - start
loaded = time.perf_counter()
catalog.embedder.encode(["warm up"])
model = time.perf_counter() - loaded
first = time.perf_counter()
catalog.search("media server for films")
query = time.perf_counter() - first
stats = catalog.stats
print(json.dumps({"warm_start_s": ready, "model_load_s": model, "first_query_s": query,
                  "embedded": stats.embedded, "discoveries": stats.discoveries,
                  "cache_loads": stats.cache_loads}))
"""


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def queries(count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    forms = [
        "{what}",
        "set up {what}",
        "deploy {title}",
        "I want {what} at home",
        "{job} {title}",
        "something for {what}",
        "how do I {job} {what}",
        "{title} {job} playbook",
    ]
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        name, what, _ = rng.choice(SERVICES)
        job = rng.choice(JOBS)[0]
        text = rng.choice(forms).format(what=what, title=name.replace("-", " "), job=job)
        if text.lower() not in seen:
            seen.add(text.lower())
            out.append(text)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="chiffon-bench-catalog-") as scratch:
        base = Path(scratch)
        repo, cache = base / "homelab-infra", base / "cache"
        made = generate(repo, args.playbooks)
        started = time.perf_counter()
        catalog = Catalog(repo, cache)
        discovery = catalog.discovery()
        discovered = time.perf_counter()
        catalog.embedder.encode(["load the model"])
        loaded = time.perf_counter()
        catalog.warm()
        built = time.perf_counter()
        entries = len(discovery.entries)
        results["repository"] = {
            "playbooks": len(made),
            "entries": entries,
            "warnings": len(discovery.warnings),
        }
        results["cold"] = {
            "cold_index_s": built - started,
            "discovery_s": discovered - started,
            "model_load_s": loaded - discovered,
            "embed_and_index_s": built - loaded,
            "texts_embedded": catalog.stats.embedded,
        }
        print(
            f"cold index: {built - started:.1f} s for {entries} entries ({catalog.stats.embedded} texts): "
            f"discovery {discovered - started:.1f} s, model load {loaded - discovered:.1f} s, "
            f"embedding + FAISS {built - loaded:.1f} s",
            flush=True,
        )

        warm_runs = []
        for _ in range(args.warm_runs):
            done = subprocess.run(
                [sys.executable, "-c", WARM_CHILD, str(repo), str(cache)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            warm_runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        warm = min(warm_runs, key=lambda r: r["warm_start_s"])
        results["warm"] = {**warm, "runs": [r["warm_start_s"] for r in warm_runs]}
        print(
            f"warm start: {warm['warm_start_s']:.2f} s (best of {len(warm_runs)}; "
            f"embedded {warm['embedded']}, discoveries {warm['discoveries']}); "
            f"model load for the first query {warm['model_load_s']:.1f} s",
            flush=True,
        )

        timings, model_alone = [], []
        for text in queries(args.queries):
            start = time.perf_counter()
            catalog.search(text, 5)
            timings.append((time.perf_counter() - start) * 1000)
            # The anchor (bench.suite): the model embedding the same query alone, right after.
            start = time.perf_counter()
            catalog.embedder.encode([text])
            model_alone.append((time.perf_counter() - start) * 1000)
        results["query"] = {
            "count": len(timings),
            "p50_ms": statistics.median(timings),
            "p95_ms": percentile(timings, 0.95),
            "max_ms": max(timings),
            "timings_ms": [round(t, 2) for t in timings],
            "embedding_alone_p50_ms": statistics.median(model_alone),
            "embedding_alone_ms": [round(t, 2) for t in model_alone],
        }
        print(
            f"query: p50 {results['query']['p50_ms']:.1f} ms, p95 {results['query']['p95_ms']:.1f} ms, "
            f"max {results['query']['max_ms']:.1f} ms over {len(timings)} distinct queries",
            flush=True,
        )

        nas = Catalog(write_ansible_nas(base / "ansible-nas"), cache)
        top1 = top3 = 0
        misses = []
        for text, app in NAS_QUERIES:
            names = [m.entry.name for m in nas.search(text, 3).matches]
            top1 += names[0] == app
            top3 += app in names
            if names[0] != app:
                misses.append({"query": text, "want": app, "got": names})
        example = Catalog(ROOT / "examples" / "homelab-infra", cache)
        kuma_first = example.search("uptime monitoring").matches[0].entry.path
        results["quality"] = {
            "labelled": len(NAS_QUERIES),
            "top1": top1 / len(NAS_QUERIES),
            "top3": top3 / len(NAS_QUERIES),
            "misses": misses,
            "example_uptime_monitoring_first": kuma_first,
        }
        print(
            f"quality (ansible-nas-like, {len(NAS_QUERIES)} labelled requests): "
            f"top-1 {top1}/{len(NAS_QUERIES)}, top-3 {top3}/{len(NAS_QUERIES)}; "
            f"example 'uptime monitoring' -> {kuma_first}",
            flush=True,
        )
    figures = {
        "cold_index_s": results["cold"]["cold_index_s"],
        "warm_start_s": results["warm"]["warm_start_s"],
        "query_p50_ms": results["query"]["p50_ms"],
    }
    results["targets"] = {
        key: {"figure": figures[key], "target": TARGETS[key], "met": figures[key] <= TARGETS[key]}
        for key in TARGETS
    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer queries and warm starts (a smoke test)")
    parser.add_argument("--playbooks", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.queries = args.queries or (60 if args.quick else 300)
    args.warm_runs = 1 if args.quick else 3
    from bench.common import Timing, where_written, write_results

    timing = Timing()
    results = run(args)
    arguments = {"playbooks": args.playbooks, "queries": args.queries, "warm_runs": args.warm_runs}
    document = write_results(args.json, timing, quick=args.quick, arguments=arguments, **results)
    for key, row in results["targets"].items():
        print(f"{key}: {row['figure']:.2f} (target ≤ {row['target']:g}) {'met' if row['met'] else 'MISSED'}")
    print(where_written(document, args.json))
    return 0 if all(row["met"] for row in results["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
