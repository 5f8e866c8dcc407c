"""The only code that opens model files: readers, LoRA adapters, artifact folders (safety
vectors, Fisher scores), the shard writer."""

from realignkit.checkpoint.adapter import LoraAdapter, LoraFactors
from realignkit.checkpoint.artifact import FisherScores, SafetyVector, TensorSource
from realignkit.checkpoint.card import model_card
from realignkit.checkpoint.finetuned import FinetunedWeights, check_same_layout
from realignkit.checkpoint.reader import CheckpointReader, ensure_finite
from realignkit.checkpoint.source import resolve_model_dir
from realignkit.checkpoint.writer import CheckpointWriter

__all__ = [
    "CheckpointReader",
    "CheckpointWriter",
    "FinetunedWeights",
    "FisherScores",
    "LoraAdapter",
    "LoraFactors",
    "SafetyVector",
    "TensorSource",
    "check_same_layout",
    "ensure_finite",
    "model_card",
    "resolve_model_dir",
]
