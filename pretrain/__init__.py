"""The `pretrain` command line and its presets (pretrain/configs/*.yaml)."""
