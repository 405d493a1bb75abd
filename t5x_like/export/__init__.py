"""Export of trained checkpoints to HuggingFace `transformers` folders."""

from t5x_like.export.tokenizer import build_fast_tokenizer, export_sentencepiece_tokenizer
from t5x_like.families.bert.export import bert_to_hf_state_dict, export_bert, hf_config_dict

__all__ = [
    "bert_to_hf_state_dict",
    "build_fast_tokenizer",
    "export_bert",
    "export_sentencepiece_tokenizer",
    "hf_config_dict",
]
