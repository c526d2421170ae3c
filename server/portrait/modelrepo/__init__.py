"""Building the model repository: sources, conversion, Triton configs, manifest."""
