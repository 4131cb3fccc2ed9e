"""Real-time prediction over HTTP: ``behavior-lm serve RUN_DIR`` (FastAPI + uvicorn)."""
