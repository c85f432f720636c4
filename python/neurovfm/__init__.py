"""neurovfm: fast, exact preprocessing of brain CT and MRI for NeuroVFM.

``import neurovfm`` and ``import neurovfm.data`` do not import torch.
"""

from ._threads import get_num_threads, set_num_threads
from . import errors

__version__ = "0.2.0"

__all__ = ["set_num_threads", "get_num_threads", "errors", "__version__"]
