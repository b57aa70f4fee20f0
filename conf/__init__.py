"""Hydra configs of unipercept, shipped as package data (see `unipercept.config`)."""
