"""Config presets, one file each; every file defines `get_config() -> TrainConfig`."""
