"""The Train tab's endpoints through gradio_client against the real app (conftest.app_server), and
its notice in a real browser: one training run at a time, a notice above the generation tabs with a
Stop button while it runs, and "Use this model" never replacing a model the run did not export."""
import re
import time

import pytest
from gradio_client.exceptions import AppError

from core import load_model
from core.train import train
from tests.test_train_robustness import tiny_ae


def _error(client, api_name: str, **kwargs) -> str:
    with pytest.raises(AppError) as caught:
        client.predict(api_name=api_name, **kwargs)
    return str(caught.value)


def test_use_this_model_never_replaces_a_shipped_model(client, app_server):
    """A run named like a shipped model (the server's tiny-txt2img) is refused export, the file
    stays; the run's own export works and may be redone."""
    shipped = app_server.weights / "tiny-txt2img.safetensors"
    before = shipped.read_bytes()
    assert train("autoencoder", tiny_ae(), name="tiny-txt2img", runs_dir=app_server.runs) == "finished"
    message = _error(client, "/train_export", name="tiny-txt2img")
    assert "tiny-txt2img.safetensors already holds the model 'tiny-txt2img'" in message and "move" in message
    assert shipped.read_bytes() == before

    assert train("autoencoder", tiny_ae(), name="own-export", runs_dir=app_server.runs) == "finished"
    for _ in range(2):                                       # re-exporting the run's own model works
        path = client.predict(name="own-export", api_name="/train_export")
        assert path.endswith("own-export.safetensors")
    assert load_model(app_server.weights / "own-export.safetensors").metadata["ldm_studio_name"] == "own-export"
    (app_server.weights / "own-export.safetensors").unlink()


def test_notice_above_the_generation_tabs_stops_the_run_and_one_run_at_a_time(page, client):  # noqa: F811
    name = f"notice-{time.strftime('%H%M%S')}"
    client.predict(stage="autoencoder", model_size="tiny", image_size=32, steps=5000, batch_size=2, name=name,
                   api_name="/train_start")
    try:
        assert re.search(rf"already running \({name}\).*--max-training-runs",
                         _error(client, "/train_start", stage="autoencoder", model_size="tiny", name=f"{name}-2"))
        # The page is on Text to image: the notice names the run, its Stop button stops it.
        assert page.get_by_role("tab", name="Text to image", exact=True).get_attribute("aria-selected") == "true"
        notice = page.locator(".prose.ldm-training-notice-text")
        notice.get_by_text(re.compile(f"Training {name} \\(running")).wait_for()
        page.locator(".ldm-training-notice-stop").click()
        notice.wait_for(state="hidden", timeout=60_000)             # the trainer saves a checkpoint first
        assert client.predict(name=name, api_name="/train_status")["status"] == "stopped"
    finally:
        if client.predict(name=name, api_name="/train_status")["status"] in ("running", "stopping"):
            client.predict(name=name, api_name="/train_stop")
