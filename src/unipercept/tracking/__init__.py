"""Trackers behind one interface: ``update(Instances) -> Instances``."""

from unipercept.tracking.base import Tracker

__all__ = ["Tracker"]
