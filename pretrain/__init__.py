"""The `pretrain` command line (presets: t5x_like/families/<name>/presets/*.yaml)."""
