"""Ingest: a folder of the user's own videos -> clips in the training data format (DESIGN.md 7, docs/data_format.md)."""

from .config import IngestConfig, build_ingest_config
from .folder import ingest
from .quality import ClipStats, measure_clip, rejection
from .scenes import SceneCuts, scene_starts
from .sources import Source, find_sources

__all__ = [
    "ClipStats",
    "IngestConfig",
    "SceneCuts",
    "Source",
    "build_ingest_config",
    "find_sources",
    "ingest",
    "measure_clip",
    "rejection",
    "scene_starts",
]
