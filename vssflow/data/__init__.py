"""Data: the Parquet schema, shard sets on disk and their one reader, manifests, mixing and the training sampler."""

from vssflow.data.shard_set import ShardSet

__all__ = ["ShardSet"]
