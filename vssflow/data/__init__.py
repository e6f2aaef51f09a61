"""Data: manifests, the Parquet contract, shards, the training reader and feature-level mixing."""

from vssflow.data.dataset import BucketBatchSampler, ShardDataset

__all__ = ["BucketBatchSampler", "ShardDataset"]
