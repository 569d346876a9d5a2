"""Precompute: saliency-masked teacher labels, one pure task per (shard, view epoch) (docs/design.md §2, §6)."""
