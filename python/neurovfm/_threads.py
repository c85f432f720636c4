"""Thread-count policy for the C++ kernels.

Order of precedence: :func:`set_num_threads`, the ``NEUROVFM_NUM_THREADS``
environment variable, 1 inside a PyTorch DataLoader worker, then the CPUs this
process may use (affinity mask and cgroup CPU quota).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator

from .errors import InvalidArgumentError

_num_threads: int | None = None
_local = threading.local()


def _cgroup_cpu_limit() -> int | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.floor(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        if quota_us > 0 and period_us > 0:
            return max(1, math.floor(quota_us / period_us))
    except (OSError, ValueError):
        pass
    return None


_cpus_cache: tuple[int, int] | None = None


def available_cpus() -> int:
    """CPUs this process may run on: affinity mask, capped by a cgroup quota.

    Read once per process (and again in a forked child)."""
    global _cpus_cache
    pid = os.getpid()
    if _cpus_cache is not None and _cpus_cache[0] == pid:
        return _cpus_cache[1]
    n = _read_available_cpus()
    _cpus_cache = (pid, n)
    return n


def _read_available_cpus() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, limit)
    return max(1, n)


def _in_dataloader_worker() -> bool:
    import sys

    if "torch" not in sys.modules:
        return False
    try:
        from torch.utils.data import get_worker_info

        return get_worker_info() is not None
    except Exception:  # pragma: no cover - torch without data utilities
        return False


def set_num_threads(n: int | None) -> None:
    """Set the number of threads the kernels use (``None`` restores the default)."""
    global _num_threads
    if n is None:
        _num_threads = None
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(f"number of threads must be a positive integer, got {n!r}")
    _num_threads = n


@contextlib.contextmanager
def thread_limit(n: int) -> Iterator[None]:
    """Within this block, kernels called from the current thread use ``n`` threads
    (used by parallel builders that run one image per worker)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(f"number of threads must be a positive integer, got {n!r}")
    prev = getattr(_local, "n", None)
    _local.n = n
    try:
        yield
    finally:
        _local.n = prev


def get_num_threads() -> int:
    """The number of threads the kernels will use for the next call."""
    local: int | None = getattr(_local, "n", None)
    if local is not None:
        return local
    if _num_threads is not None:
        return _num_threads
    env = os.environ.get("NEUROVFM_NUM_THREADS")
    if env:
        try:
            v = int(env)
            if v >= 1:
                return v
        except ValueError:
            pass
        raise InvalidArgumentError(f"NEUROVFM_NUM_THREADS must be a positive integer, got {env!r}")
    if _in_dataloader_worker():
        return 1
    return available_cpus()
