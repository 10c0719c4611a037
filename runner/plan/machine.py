"""What this machine has: this process's resident memory, and the memory a job may use (GPU
memory, the cgroup limit, or the RAM available now)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["available_memory", "rss_bytes"]


def rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory(device: str) -> tuple[int | None, str]:
    """(bytes, where that number comes from) for the detected device."""
    if device == "cuda":
        import torch

        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        return int(total), f"GPU {torch.cuda.get_device_name()} memory"
    limit = _cgroup_limit()
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle}
        available = info.get("MemAvailable")
    except OSError:
        available = None
    if limit is not None and (available is None or limit < available):
        return limit, "the cgroup memory limit"
    if available is not None:
        return available, "available RAM now (MemAvailable)"
    return None, "unknown"


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None
