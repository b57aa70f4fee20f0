"""Trackers behind one interface: ``update(Instances) -> Instances``.

- :class:`QDTrack`: bi-softmax over appearance embeddings (UNINEXT's MOT tracker);
- :class:`IdolTracker`: a memory bank of embeddings per track (UNINEXT's VIS tracker);
- :class:`ByteTrack`: two-threshold box-IoU association against Kalman-predicted boxes, no
  embeddings needed;
- :class:`FlowTracker`: optical-flow-warped mask IoU (the UVO tracker), needs the frame;
- :class:`ExternalTracker`: a tracker of Roboflow's optional ``trackers`` package (ByteTrack,
  OC-SORT, BoT-SORT, SORT, C-BIoU).
"""

from unipercept.tracking.base import Tracker
from unipercept.tracking.bytetrack import ByteTrack
from unipercept.tracking.external import ExternalTracker
from unipercept.tracking.flow import FlowTracker
from unipercept.tracking.idol import IdolTracker
from unipercept.tracking.kalman import BoxKalmanFilter
from unipercept.tracking.qdtrack import QDTrack

__all__ = [
    "BoxKalmanFilter",
    "ByteTrack",
    "ExternalTracker",
    "FlowTracker",
    "IdolTracker",
    "QDTrack",
    "Tracker",
]
