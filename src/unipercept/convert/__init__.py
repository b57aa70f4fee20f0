"""``python -m unipercept.convert``: other projects' checkpoints as unipercept model folders."""
