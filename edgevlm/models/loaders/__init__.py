"""Checkpoint loaders, one file per checkpoint family, each registered in models.registry."""
