"""Readers of the datasets' on-disk formats; each yields :class:`unipercept.data.types.Sample`.

``READERS`` maps names to reader classes for configs and the command line (a plain dict:
nothing registers itself on import).
"""

from unipercept.data.datasets.base import DatasetError, DatasetReader
from unipercept.data.datasets.bdd import Bdd100kReader
from unipercept.data.datasets.coco import CocoReader
from unipercept.data.datasets.davis import DavisReader
from unipercept.data.datasets.mot import MotChallengeReader
from unipercept.data.datasets.refcoco import RefCocoReader
from unipercept.data.datasets.rvos import RefDavisReader, RefYouTubeVosReader
from unipercept.data.datasets.sot import Got10kReader, LasotReader, TrackingNetReader
from unipercept.data.datasets.ytvis import YouTubeVisReader
from unipercept.data.datasets.ytvos import YouTubeVosReader

READERS: dict[str, type[DatasetReader]] = {
    "coco": CocoReader,
    "objects365": CocoReader,
    "lvis": CocoReader,
    "refcoco": RefCocoReader,
    "ytvis": YouTubeVisReader,
    "ovis": YouTubeVisReader,
    "davis": DavisReader,
    "ytvos": YouTubeVosReader,
    "lasot": LasotReader,
    "got10k": Got10kReader,
    "trackingnet": TrackingNetReader,
    "mot": MotChallengeReader,
    "bdd100k": Bdd100kReader,
    "refytvos": RefYouTubeVosReader,
    "refdavis": RefDavisReader,
}

__all__ = [
    "READERS",
    "Bdd100kReader",
    "CocoReader",
    "DatasetError",
    "DatasetReader",
    "DavisReader",
    "Got10kReader",
    "LasotReader",
    "MotChallengeReader",
    "RefCocoReader",
    "RefDavisReader",
    "RefYouTubeVosReader",
    "TrackingNetReader",
    "YouTubeVisReader",
    "YouTubeVosReader",
]
