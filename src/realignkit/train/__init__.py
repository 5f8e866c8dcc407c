"""Supervised fine-tuning (full or LoRA) through the chat template: `finetune` and `unalign`."""

from realignkit.train.finetune import TrainConfig, encode_pair, finetune, load_pairs, unalign

__all__ = ["TrainConfig", "encode_pair", "finetune", "load_pairs", "unalign"]
