"""The training data stream: shard specs to committed shards (sources), a worker's stages (stages),
the shared-memory arena a batch crosses in (arena), the loader and its finishing step (loader),
mixing and image transforms, and the one config of it all (config)."""
