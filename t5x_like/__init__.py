"""t5x_like: Flax models, sharding, training and export for self-supervised LM pretraining."""

from t5x_like.pretrained import Pretrained, load_pretrained

__all__ = ["Pretrained", "load_pretrained"]
