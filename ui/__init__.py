"""The Gradio web app: one module per tab, handlers that are plain functions calling core.pipelines.

    from ui.blocks import build_app          # the Blocks, not launched (tests, embedding)
    python app.py                            # parse flags, build, launch

ui imports core, never the reverse (tests/test_architecture.py); no model math lives here.
"""
import os

# Offline and private by default: no Gradio telemetry or version check, whoever imports the app.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
