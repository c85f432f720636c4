"""The epoch of an ImageDataset, shared with its DataLoader workers."""

from __future__ import annotations

import multiprocessing
from typing import Any

__all__ = ["SharedEpoch"]


class SharedEpoch:
    """An integer in shared memory: ``set_epoch`` in the main process reaches
    persistent DataLoader workers (fork, spawn or forkserver)."""

    def __init__(self, value: int = 0):
        self._v = multiprocessing.RawValue("q", int(value))

    @property
    def value(self) -> int:
        return int(self._v.value)

    @value.setter
    def value(self, v: int) -> None:
        self._v.value = int(v)

    def __getstate__(self) -> dict[str, Any]:
        from multiprocessing import context

        if context.get_spawning_popen() is not None:  # starting a worker: share
            return {"shared": self._v}
        return {"value": self.value}  # any other pickle: a plain copy

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "shared" in state:
            self._v = state["shared"]
        else:
            self._v = multiprocessing.RawValue("q", int(state["value"]))
