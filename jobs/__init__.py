"""Background training jobs: a SQLite store (survives restarts) and a runner (one trainer process per job).

Nothing here imports gradio, so the CLI twin (`python -m trainer jobs ...`) drives the same code headless.
"""
