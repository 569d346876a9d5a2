"""Precompute: saliency-masked teacher labels, one pure task per (shard, view epoch) (DESIGN §2, §6)."""
