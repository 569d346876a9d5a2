"""Datasets as WebDataset shards: import, manifests, the safe streaming reader, verification."""
