"""Inference pipelines: a study on disk to the packed batch the NeuroVFM encoder reads.

Importing this package does not import torch; :meth:`StudyPreprocessor.load_study`
imports it when called (the batch holds torch tensors, as the published code's does).
"""

from .preprocessor import StudyPreprocessor

__all__ = ["StudyPreprocessor"]
