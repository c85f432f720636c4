"""What tests/test_torchrun.py adds to README's training example to run it under torchrun:
the process group (gloo), a tiny DDP model trained on each batch, and at the end the
checks, made on rank 0 over what every rank saw (all-gathered).

The generated script (README's block, see ``training_script``) calls ``Harness()`` first
thing under its ``__main__`` guard, ``harness.step(batch, epoch)`` where README has its
``# model(...)`` comment, and ``harness.finish(dataset, sampler, loader)`` after the loop.
Rank 0 writes the record of the run as JSON to ``$NEUROVFM_DDP_RESULT``: per epoch, the
batches of every rank (studies, images, crops, flips, windows, token counts and sums)
and the trained weights; ``problems`` lists what the checks found (the run then exits 1).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def training_script(readme_block: str, labels: dict[str, int], batch_size: int) -> str:
    """README's training block as the script torchrun runs: the labels of the test's studies,
    ``batch_size``, and the harness calls; everything else as written. Each change must
    find its line exactly once."""
    lines = readme_block.splitlines()

    def one(pattern: str) -> int:
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert len(hits) == 1, f"README's training example: {len(hits)} lines match {pattern!r}, expected 1"
        return hits[0]

    i = one(r"^labels = ")
    lines[i] = f"labels = {labels!r}  # (test: the dataset's studies)"
    i = one(r"StudyAwareBatchSampler\(dataset, batch_size=\d+")
    lines[i] = re.sub(r"batch_size=\d+", f"batch_size={batch_size}", lines[i])
    i = one(r"^\s*# model\(")
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = f"{indent}harness.step(batch, epoch)  # (test: README's model comment)"
    i = one(r'^if __name__ == "__main__":')
    lines[i + 1 : i + 1] = ["    harness = ddp_harness.Harness()  # (test: process group, DDP model)"]
    lines.insert(0, "import ddp_harness  # (test)")
    lines.append("    harness.finish(dataset, sampler, loader)  # (test: all-gather, checks on rank 0)")
    return "\n".join(lines) + "\n"


def _plain(x: Any) -> Any:
    """JSON-able: tensors and tuples as lists."""
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    return x


class Harness:
    def __init__(self) -> None:
        torch.set_num_threads(1)
        dist.init_process_group("gloo")  # torchrun gives RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(0)
        self.model = DistributedDataParallel(torch.nn.Linear(1024, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.epochs: dict[int, list[dict[str, Any]]] = {}

    def step(self, batch: dict[str, Any], epoch: int) -> None:
        """One training step of the tiny model (mean token of each image -> logit), and
        the record of the batch."""
        img, index, lengths = batch["img"], batch["image_index"], batch["lengths"]
        n = len(lengths)
        sums = torch.zeros(n, img.shape[1], dtype=torch.float64).index_add_(0, index, img.to(torch.float64))
        mean = (sums / lengths.clamp(min=1).unsqueeze(1)).to(torch.float32)
        logits = self.model(mean).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"].to(torch.float32))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        studies = list(dict.fromkeys(batch["study"]))
        self.epochs.setdefault(int(epoch), []).append(
            {
                "studies": studies,
                "paths": list(batch["path"]),
                "labels": _plain(batch["label"]),
                "windows": list(batch["window"]),
                "crops": _plain(batch["crop"]),
                "flips": _plain(batch["flips"]),
                "transpose": _plain(batch["transpose"]),
                "tokens": _plain(lengths),
                "token_sums": [float(v) for v in sums.sum(dim=1)],
                "loss": float(loss.detach()),
            }
        )

    def finish(self, dataset: Any, sampler: Any, loader: Any) -> None:
        mine = {
            "rank": self.rank,
            "epochs": self.epochs,
            "len_sampler": len(sampler),
            "num_workers": loader.num_workers,
            "persistent_workers": loader.persistent_workers,
            "weights": [float(v) for v in torch.cat([p.detach().flatten() for p in self.model.parameters()])],
        }
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        problems: list[str] = []
        if self.rank == 0:
            studies = {str(s): len(ix) for s, ix in dataset.study_groups()}
            problems = check(gathered, studies)
            record = {
                "world_size": self.world,
                "studies": studies,
                "ranks": gathered,
                "problems": problems,
            }
            with open(os.environ["NEUROVFM_DDP_RESULT"], "w") as f:
                json.dump(record, f, indent=1)
        dist.barrier()
        dist.destroy_process_group()
        if problems:
            print("\n".join(["DDP checks failed on rank 0:", *problems]), file=sys.stderr)
            sys.exit(1)
        print(f"rank {self.rank}: {len(self.epochs)} epochs, {[len(b) for b in self.epochs.values()]} batches")


def check(ranks: list[dict[str, Any]], studies: dict[str, int]) -> list[str]:
    """What is wrong with the ranks' records (empty: nothing)."""
    problems = []
    epochs = sorted(ranks[0]["epochs"])
    if epochs != [0, 1]:
        problems.append(f"rank 0 ran epochs {epochs}, not [0, 1]")
    orders = []
    for r in ranks:
        if sorted(r["epochs"]) != epochs:
            problems.append(f"rank {r['rank']} ran epochs {sorted(r['epochs'])}, rank 0 {epochs}")
        if r["num_workers"] != 2 or not r["persistent_workers"]:
            problems.append(
                f"rank {r['rank']}: {r['num_workers']} DataLoader workers, persistent {r['persistent_workers']}"
            )
    for e in epochs:
        counts = [len(r["epochs"].get(e, [])) for r in ranks]
        if len(set(counts)) != 1 or counts[0] == 0:
            problems.append(f"epoch {e}: batch counts per rank {counts}")
        seen: dict[str, int] = {}
        for r in ranks:
            for b in r["epochs"].get(e, []):
                for s in b["studies"]:
                    if s in seen:
                        problems.append(f"epoch {e}: study {s} on rank {seen[s]} and rank {r['rank']}")
                    seen[s] = r["rank"]
                    n = sum(1 for p in b["paths"] if p.split("/")[0] == s)
                    if n != studies.get(s):
                        problems.append(
                            f"epoch {e}: a batch of rank {r['rank']} holds {n} of the {studies.get(s)} images of {s}"
                        )
        if sorted(seen) != sorted(studies):
            problems.append(f"epoch {e}: studies seen {sorted(seen)}, the dataset's {sorted(studies)}")
        # the global order: rank r's j-th batch is global batch j * world + r
        order = [b["studies"] for j in range(max(counts)) for r in ranks for b in r["epochs"].get(e, [])[j : j + 1]]
        orders.append(order)
    if len(orders) == 2 and orders[0] == orders[1]:
        problems.append(f"epochs 0 and 1 have the same study order {orders[0]}")
    w0 = ranks[0]["weights"]
    for r in ranks[1:]:
        if r["weights"] != w0:
            problems.append(f"rank {r['rank']}'s trained weights differ from rank 0's (DDP keeps them equal)")
    return problems
