"""Serving the model repository from a real Triton Inference Server."""
