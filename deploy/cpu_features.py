"""What this CPU offers a runtime: the physical cores this process may run on, and its instruction-set flags.

Both are read, not guessed: the affinity mask (taskset, cgroups' cpusets, a container's --cpuset-cpus) bounds
the cores, and the kernel's topology files fold SMT siblings into one physical core, so a 4-core/8-thread laptop
allowed every CPU counts 4, and a container pinned to 2 logical CPUs of one core counts 1.
"""

from __future__ import annotations

import os
import platform
from typing import Iterable, Optional

_TOPOLOGY = "/sys/devices/system/cpu/cpu{}/topology/{}"
# x86: AVX512_BF16 (Cooper Lake, Zen 4 and later) or AMX-BF16 (Sapphire Rapids); aarch64: the Armv8.6 BF16 extension.
BF16_FLAGS = {"x86_64": {"avx512_bf16", "amx_bf16"}, "aarch64": {"bf16"}}


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity mask; every CPU where the OS has no mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def physical_cores(cpus: Optional[Iterable[int]] = None, topology: str = _TOPOLOGY) -> int:
    """Physical cores among `cpus` (default: this process's usable CPUs): logical CPUs that share a package
    and a core id are one core. Where the topology files are unreadable, psutil's physical count capped by
    the usable CPUs; where psutil is absent too, the usable CPUs."""
    cpus = list(usable_cpus() if cpus is None else cpus)
    cores = set()
    for cpu in cpus:
        package, core = _read(topology.format(cpu, "physical_package_id")), _read(topology.format(cpu, "core_id"))
        if core is None:
            break
        cores.add((package, core))
    else:
        if cores:
            return len(cores)
    try:
        import psutil

        total = psutil.cpu_count(logical=False)
    except ImportError:
        total = None
    return max(1, min(len(cpus), total or len(cpus)))


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 `flags`, Arm `Features`); empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_family_name(machine: Optional[str] = None) -> str:
    name = (machine or platform.machine()).lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(name, name)


def has_bf16(flags: Optional[set[str]] = None, machine: Optional[str] = None) -> bool:
    """True where the CPU computes in bf16 natively, so a bf16 form runs faster instead of being emulated."""
    flags = cpu_flags() if flags is None else flags
    return bool(BF16_FLAGS.get(cpu_family_name(machine), set()) & flags)


def has_vnni(flags: Optional[set[str]] = None) -> bool:
    """True where this CPU has AVX-512 VNNI or AVX-VNNI, so ONNX Runtime's x86 int8 kernels accumulate int8 × int8
    products without VPMADDUBSW's 16-bit saturation (assumed True where the flags cannot be read)."""
    flags = cpu_flags() if flags is None else flags
    return True if not flags else bool({"avx512_vnni", "avx_vnni"} & flags)
