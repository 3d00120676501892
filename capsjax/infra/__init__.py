"""The run's infrastructure, beside the training loop: Orbax checkpoints with manifests
(`checkpoint`), the workdir and its lock (`workdir`), signals (`interrupt`), multi-process runs
(`distributed`), device meshes and sharding (`parallel`), glibc allocator tuning (`runtime`) and
the hook points tests step into (`hooks`)."""
