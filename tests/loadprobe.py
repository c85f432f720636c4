"""Memory and open-file probes of ImageDataset through a torch DataLoader (Linux /proc).

Used by tests/test_loader_load.py (assertions) and bench/bench_loader_memory.py
(the figures). Per process: anonymous (private heap) memory, resident and
proportional set size, open file descriptors and cache files mapped, read from
``/proc/<pid>/smaps_rollup``, ``/proc/<pid>/fd`` and ``/proc/<pid>/maps``.
"""

from __future__ import annotations

import os
import time


def children(pid: int) -> list:
    """Live child processes of ``pid`` (DataLoader workers)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(name))
    return sorted(out)


def stats(pid: int, marker: str = "processed") -> dict:
    """{anon_mb, rss_mb, pss_mb, fds, cache_maps} of one process (None values if it is gone)."""
    kb = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    kb[parts[0][:-1]] = int(parts[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/maps") as f:
            maps = sum(1 for line in f if marker in line and ".pt" in line)
    except OSError:
        return {"anon_mb": None, "rss_mb": None, "pss_mb": None, "fds": None, "cache_maps": None}
    return {
        "anon_mb": kb.get("Anonymous", 0) / 1024,
        "rss_mb": kb.get("Rss", 0) / 1024,
        "pss_mb": kb.get("Pss", 0) / 1024,
        "fds": fds,
        "cache_maps": maps,
    }


def run_epochs(
    dataset,
    epochs: int,
    num_workers: int,
    persistent: bool,
    samples_per_epoch: int = 4,
    batch_size=None,
    collate_fn=None,
) -> list:
    """Iterate ``dataset`` through a shuffled DataLoader (one item at a time, or batches
    made by ``collate_fn``, which must keep the items' ``path`` list) for ``epochs``
    epochs; returns one record per epoch: items, seconds, the main process's
    stats and, sampled ``samples_per_epoch`` times while the epoch runs, every worker's
    (the last sample) and the peak open-file and cache-mapping counts."""
    import torch

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate_fn,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=persistent and num_workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    me = os.getpid()
    n = len(dataset)
    every = max(1, n // samples_per_epoch // (batch_size or 1))
    out = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        t0 = time.perf_counter()
        items, batches, peak_fds, peak_maps, workers = 0, 0, 0, 0, []
        for item in loader:
            assert item["img"].numel() > 0
            items += 1 if batch_size is None else len(item["path"])
            batches += 1
            if batches % every == 0 or items == n:
                workers = [stats(p) for p in children(me)]
                live = [w for w in workers if w["fds"] is not None]
                peak_fds = max([peak_fds] + [w["fds"] for w in live])
                peak_maps = max([peak_maps] + [w["cache_maps"] for w in live])
            del item
        out.append(
            {
                "epoch": epoch,
                "items": items,
                "seconds": time.perf_counter() - t0,
                "main": stats(me),
                "workers": [w for w in workers if w["fds"] is not None],
                "peak_worker_fds": peak_fds,
                "peak_worker_cache_maps": peak_maps,
            }
        )
    del loader
    return out


def cache_bytes(data_dir) -> int:
    total = 0
    for root, _d, files in os.walk(os.path.join(os.fspath(data_dir), "processed")):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if f.endswith(".pt"))
    return total
