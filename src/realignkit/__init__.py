"""realignkit: restore the safety of fine-tuned language models after the fact."""

__version__ = "0.1.0"
