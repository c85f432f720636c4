"""Ray, the runner's third executor (the ``neurovfm[ray]`` extra): the same jobs, ``work``
and summary as a local run, with each job a Ray task on a cluster.

``neurovfm prepare ... -o OUT --ray [ADDRESS]`` and ``neurovfm cache build DIR --ray
[ADDRESS]`` (and ``executor="ray"`` in :func:`~neurovfm.data.prepare_many` and
:meth:`~neurovfm.data.CacheManager.build_cache`) connect to the cluster at ``ADDRESS``
(``ray.init(address=...)``: ``auto``, ``127.0.0.1:6379``, ``ray://host:10001``; none: the
``RAY_ADDRESS`` variable, or a local Ray started for the run) and run each job as a task
of one CPU. A task whose worker dies (a killed process, a lost node) is retried by Ray
(:data:`MAX_RETRIES`); its output is written whole or not at all (a temporary name, then
a rename; or one object in object storage), so a retried task never leaves a partial
output. The driver keeps at most :data:`IN_FLIGHT` tasks per CPU of the cluster in
flight, gets each result as it finishes, and records it as a local run does. The output
folder (or dataset folder) must be one every node sees: a shared file system, or a URL
prefix in object storage.

For a pipeline of your own, :class:`PrepareRows` is a ``ray.data.Dataset.map_batches``
callable: rows of ``path``, ``mode`` (and optionally ``id``) in, prepared outputs and
their summary rows out.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from ..errors import UsageError

__all__ = ["IN_FLIGHT", "MAX_RETRIES", "PrepareRows", "connect", "ray_jobs"]

#: Retries of a task whose worker died (Ray's ``max_retries``).
MAX_RETRIES = 3
#: Tasks in flight per CPU of the cluster (enough to keep every CPU busy, few enough that
#: the driver's memory of pending results stays small).
IN_FLIGHT = 2


def _ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'neurovfm[ray]'") from None


def connect(address: str | None = None) -> Any:
    """The ``ray`` module, connected: to ``address``, else to ``RAY_ADDRESS``, else to a
    local Ray started for this process (``ray.init()``). Already connected: as it is."""
    ray = _ray()
    if not ray.is_initialized():
        # "local": a Ray of its own, never the last cluster this machine ran (ray.init()
        # alone would try that one's address, and wait for it when it is gone)
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=False)
    return ray


def ray_jobs(
    jobs: Sequence[Any], work: Callable[[Any], Any], workers: int, name: str
) -> Generator[tuple[int, Any], None, None]:
    """The runner's ``"ray"`` executor: each job a task of one CPU (``workers`` is the
    cluster's business); ``(index, result)`` in completion order."""
    ray = connect(None)
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_call).options(name=name)
    limit = max(1, IN_FLIGHT * int(ray.cluster_resources().get("CPU", 1)))
    work_ref = ray.put(work)  # shipped once, not with every task
    pending: dict[Any, int] = {}
    k = 0
    while k < len(jobs) or pending:
        while k < len(jobs) and len(pending) < limit:
            pending[task.remote(work_ref, jobs[k])] = k
            k += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ray.get(ref)


def _call(work: Callable[[Any], Any], job: Any) -> Any:
    """A Ray task: ``work(job)`` with the kernels on this task's one CPU."""
    from .._threads import thread_limit

    with thread_limit(1):
        return work(job)


class PrepareRows:
    """A ``ray.data.Dataset.map_batches`` callable that prepares the scans of its rows.

    ``PrepareRows(out_dir, format="npz", mode=None, derived="auto", storage_options=None,
    force=False)``; each row has ``path`` (a file, a folder or a URL), ``mode`` (``ct`` or
    ``mri``; else the ``mode`` given here) and optionally ``id``. Every series of a row is
    written to ``out_dir`` (a shared folder or a URL prefix) exactly as
    :func:`~neurovfm.data.prepare_many` writes it, and the batch returned has one row per
    series: the columns of ``summary.csv`` (``input``, ``series_uid``, ``output``,
    ``status``, ``reason``, ``shape``, ``tokens``, ``foreground``, ``seconds``,
    ``mode_warnings``). Batches in and out are ``dict`` of columns (``batch_format="numpy"``
    or ``"default"``) or pandas DataFrames (``batch_format="pandas"``)::

        import ray
        from neurovfm.data.ray_executor import PrepareRows

        ray.init()
        rows = ray.data.read_csv("manifest.csv")  # path,mode[,id]
        summary = rows.map_batches(PrepareRows("out/"), batch_size=4).to_pandas()
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        format: str = "npz",
        mode: str | None = None,
        derived: str = "auto",
        storage_options: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        from .batch import FORMATS
        from .outputs import OutputDir
        from .series import check_derived

        if format not in FORMATS:
            raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.out = OutputDir(out_dir, storage_options)
        self.format, self.mode, self.force = format, mode, force
        self.derived = check_derived(derived)

    def __call__(self, batch: Any) -> Any:
        from .batch import SUMMARY_COLUMNS, _prepare_job, discover_scans

        pandas = hasattr(batch, "to_dict") and hasattr(batch, "columns")
        cols = batch.to_dict("list") if pandas else {k: list(v) for k, v in dict(batch).items()}
        if "path" not in cols:
            raise UsageError(f"PrepareRows needs a 'path' column (and 'mode', optionally 'id'), got {sorted(cols)}")
        n = len(cols["path"])
        out: dict[str, list[Any]] = {c: [] for c in SUMMARY_COLUMNS}
        for i in range(n):
            mode = str(cols.get("mode", [None] * n)[i] or self.mode or "").lower() or None
            ident = str(cols.get("id", [""] * n)[i] or "")
            for job in discover_scans([str(cols["path"][i])], mode, None, self.derived, self.out.storage_options):
                if ident:
                    job.name, job.id = f"{ident}_{job.name}", ident
                row, _ = _prepare_job(self.out, self.format, self.force, 1, {}, job)
                for c, v in zip(SUMMARY_COLUMNS, row.as_row()):
                    out[c].append(v)
        if pandas:
            return importlib.import_module("pandas").DataFrame(out)
        import numpy as np

        return {c: np.asarray(v, dtype=object) for c, v in out.items()}
