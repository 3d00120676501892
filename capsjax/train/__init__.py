"""Training: the config and its presets (`config`, `presets`), the networks' objectives
(`archs`), the compiled steps (`steps`), the loop (`loop.train`), evaluation (`evaluate`), the
model state a run records and restores (`model_state`), metrics.jsonl (`metrics`) and
TensorBoard (`tensorboard`)."""
