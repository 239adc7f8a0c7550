"""Check the desktop agent's GPU readings against ``nvidia-smi`` on a real NVIDIA machine.

    python -m bench.gpu_capacity [--allocate-gib 8] [--json FILE]

What it does, in order:

1. reads the GPUs the way a heartbeat does (:func:`chiffon.agents.capacity.read_gpus`)
   and compares every field with ``nvidia-smi --query-gpu``: names, UUIDs and
   total memory must be equal, free memory and utilisation close (the two tools
   read at slightly different instants);
2. if PyTorch with CUDA is importable, takes ``--allocate-gib`` of device memory
   and reads again: the free VRAM a heartbeat reports must drop by about that
   much, then come back after the memory is released;
3. times one full reading (NVML init, query, shutdown) — the cost an idle agent
   pays every heartbeat.

Exits 0 when every check holds, 1 otherwise, 2 when the machine has no NVIDIA GPU.
It needs only ``chiffon.agents.capacity`` and its imports (pydantic, psutil,
nvidia-ml-py), so it can run on a GPU box without the rest of Chiffon installed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from chiffon.agents.capacity import read_capacity, read_gpus
from chiffon.resources.agent import GpuInfo

# Free memory moves between two readings taken a few ms apart (other processes,
# the driver's own bookkeeping); utilisation is a sampled average.
FREE_TOLERANCE_MIB = 256
ALLOCATION_TOLERANCE_MIB = 1024
SMI_FIELDS = "index,name,uuid,memory.total,memory.free,utilization.gpu"


def nvidia_smi() -> list[dict[str, str]]:
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = SMI_FIELDS.split(",")
    return [
        dict(zip(names, (cell.strip() for cell in line.split(",")), strict=True)) for line in out.splitlines()
    ]


def compare(ours: list[GpuInfo], smi: list[dict[str, str]]) -> list[str]:
    """Every disagreement between a heartbeat's GPUs and nvidia-smi, as sentences."""
    problems: list[str] = []
    if len(ours) != len(smi):
        return [f"heartbeat sees {len(ours)} GPUs, nvidia-smi {len(smi)}"]
    for gpu, row in zip(ours, smi, strict=True):
        where = f"GPU {gpu.index}"
        if gpu.name != row["name"]:
            problems.append(f"{where}: name {gpu.name!r} vs nvidia-smi {row['name']!r}")
        if gpu.uuid != row["uuid"]:
            problems.append(f"{where}: uuid {gpu.uuid!r} vs nvidia-smi {row['uuid']!r}")
        if gpu.memory_total_mib != int(row["memory.total"]):
            problems.append(
                f"{where}: total {gpu.memory_total_mib} MiB vs nvidia-smi {row['memory.total']} MiB"
            )
        if abs(gpu.memory_free_mib - int(row["memory.free"])) > FREE_TOLERANCE_MIB:
            problems.append(f"{where}: free {gpu.memory_free_mib} MiB vs nvidia-smi {row['memory.free']} MiB")
    return problems


def check_allocation(gib: float) -> tuple[list[str], dict[str, Any]]:
    """Take ``gib`` of VRAM with PyTorch and see the heartbeat's free figure follow."""
    try:
        import torch
    except ImportError:
        return [], {"skipped": "PyTorch is not installed"}
    if not torch.cuda.is_available():
        return [], {"skipped": "PyTorch sees no CUDA device"}
    torch.cuda.init()
    before = read_gpus()[0].memory_free_mib
    block = torch.empty(int(gib * 1024**3), dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    during = read_gpus()[0].memory_free_mib
    # Keep the GPU busy for a moment so utilisation has something to report.
    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        a @ a
    torch.cuda.synchronize()
    busy_utilisation = read_gpus()[0].utilization_percent
    del block, a
    torch.cuda.empty_cache()
    after = read_gpus()[0].memory_free_mib
    expected = int(gib * 1024)
    drop = before - during
    facts = {
        "allocated_mib": expected,
        "free_before_mib": before,
        "free_during_mib": during,
        "free_after_mib": after,
        "utilization_while_busy_percent": busy_utilisation,
    }
    problems = []
    if abs(drop - expected) > ALLOCATION_TOLERANCE_MIB:
        problems.append(f"free VRAM dropped by {drop} MiB for a {expected} MiB allocation")
    if after < during + expected - ALLOCATION_TOLERANCE_MIB:
        problems.append(f"free VRAM did not come back after release ({after} MiB)")
    if busy_utilisation is None or busy_utilisation <= 0:
        problems.append(f"utilisation while multiplying matrices read {busy_utilisation}")
    return problems, facts


def reading_cost(repetitions: int = 20) -> dict[str, float]:
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        read_capacity(None)
        times.append(time.perf_counter() - start)
    return {"median_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocate-gib", type=float, default=8.0)
    parser.add_argument("--json", help="also write the findings to this file")
    args = parser.parse_args(argv)
    if shutil.which("nvidia-smi") is None or not read_gpus():
        print("no NVIDIA GPU here: nothing to check (a heartbeat reports gpus=[])")
        return 2
    ours, smi = read_gpus(), nvidia_smi()
    problems = compare(ours, smi)
    allocation_problems, allocation = check_allocation(args.allocate_gib)
    problems += allocation_problems
    findings = {
        "heartbeat_gpus": [gpu.model_dump() for gpu in ours],
        "nvidia_smi": smi,
        "allocation": allocation,
        "capacity_reading": reading_cost(),
        "problems": problems,
    }
    text = json.dumps(findings, indent=2, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text)
    print("OK: heartbeat GPU readings agree with nvidia-smi" if not problems else "MISMATCH", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
