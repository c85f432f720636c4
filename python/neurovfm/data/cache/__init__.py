"""The token cache: one package, one job per module.

* :mod:`.entry`: one cache entry, alone (its files, sidecar, validity rule, encoding,
  building under its lock, the zero-copy open); the only module that knows the format
  (docs/cache.md).
* :mod:`.fingerprint`: whether a scan changed since its entry was built.
* :mod:`.ptfile`: the ``.pt`` tensor file, written and memory-mapped without torch.
* :mod:`.manager`: :class:`CacheManager` (a dataset's cache: build, import, stats,
  verify) and :class:`BuildSummary`; its reading side is :mod:`.reader`.
* :mod:`.published`: converting a cache built by the published NeuroVFM code
  (:class:`ImportSummary`; reading and checking its files is :mod:`.published_read`).

Builds and imports run on :mod:`neurovfm.data.runner`.
"""

from ..runner import resolve_shard, resolve_workers, shard_from_env
from .entry import PIPELINE_VERSION
from .manager import BuildSummary, CacheManager, check_study_names
from .published import ImportSummary

__all__ = [
    "CacheManager",
    "BuildSummary",
    "ImportSummary",
    "PIPELINE_VERSION",
    "check_study_names",
    "resolve_shard",
    "resolve_workers",
    "shard_from_env",
]
