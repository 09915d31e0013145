"""The OpenAI-compatible HTTP gateway in front of Triton (FastAPI on uvicorn, gRPC to Triton)."""
