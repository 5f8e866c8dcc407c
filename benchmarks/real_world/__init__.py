"""The papers' experiment on a real pretrained model (SmolLM2-135M-Instruct); see run.py."""
