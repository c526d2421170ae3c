"""The HTTP service: a thin FastAPI front door around the pipeline."""
