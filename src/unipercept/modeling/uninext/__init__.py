"""UNINEXT (Yan et al., CVPR 2023) as its released checkpoints expect it.

``build_uninext(**architecture_from_shapes(shapes))`` builds the model a checkpoint describes;
:mod:`~unipercept.modeling.uninext.checkpoint` reads the ``.pth`` and renames its keys;
:mod:`~unipercept.modeling.uninext.postprocess` holds UNINEXT's test-time rules.
"""

from unipercept.modeling.uninext.build import (
    ArchitectureError,
    architecture_from_shapes,
    build_uninext,
)
from unipercept.modeling.uninext.checkpoint import UninextCheckpointError
from unipercept.modeling.uninext.model import Uninext, UninextOutput

__all__ = [
    "ArchitectureError",
    "Uninext",
    "UninextCheckpointError",
    "UninextOutput",
    "architecture_from_shapes",
    "build_uninext",
]
