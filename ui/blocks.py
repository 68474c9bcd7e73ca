"""`build_app(settings)`: the whole Gradio Blocks app, built but not launched.

Layout: a note about missing models, then the tabs (one module each under ui/), then the wiring
that crosses tabs ("send to inpaint", refreshing every model picker after training). All
generation shares one queue slot on the device (concurrency_id "device", limit 1), so other users
wait with their queue position shown.
"""
from pathlib import Path

import gradio as gr
from PIL import Image

from ui import classgen, img2img, inpaint, layout, png_info, train, txt2img, upscale
from ui.controls import picker_update
from ui.follow import job_memory
from ui.keyboard import KEYBOARD_JS
from ui.result_view import FIT_JS
from ui.send import wire_sends
from ui.settings import AppSettings
from ui.studio import Studio, models_banner

# The generation tabs, in order: (title, id, module with build(studio, demo, job) -> its parts).
GENERATION_TABS = [("Text to image", "txt2img", txt2img), ("Class / unconditional", "classgen", classgen),
                   ("Layout to image", "layout", layout), ("Image to image", "img2img", img2img),
                   ("Inpaint", "inpaint", inpaint), ("Upscale", "upscale", upscale)]

CSS = """
.ldm-generate { min-height: 72px; }
"""


def build_app(settings: AppSettings | None = None, studio: Studio | None = None) -> gr.Blocks:
    """The app for `settings` (default: weights/, outputs/, CPU), ready for .launch(**launch_options()).
    `studio`: the app's context when the caller shares it (app.py, with the --api routes)."""
    settings = settings or AppSettings()
    Image.MAX_IMAGE_PIXELS = settings.max_pixels        # PIL refuses bigger canvases before decoding
    studio = studio or Studio.create(settings)
    with gr.Blocks(title="LDM Studio", analytics_enabled=False) as demo:
        banner = gr.Markdown(models_banner(studio), elem_classes=["ldm-banner"])
        train.build_notice(studio, demo)            # "Training X in the background ... Stop training"
        # Each tab's last job id, kept in localStorage. Outside the tabs: a BrowserState inside a tab
        # that is not showing is never mounted, so a reload would not read it back.
        jobs = {tab: job_memory(tab) for _, tab, _ in GENERATION_TABS}
        built = {}
        with gr.Tabs() as tabs:
            for title, tab, module in GENERATION_TABS:
                with gr.Tab(title, id=tab):
                    built[tab] = module.build(studio, demo, jobs[tab])
            t2i, cls, lay, i2i, inp, up = (built[tab] for _, tab, _ in GENERATION_TABS)
            with gr.Tab("Train", id="train"):
                tr = train.build(studio, demo)
            with gr.Tab("PNG info", id="png_info"):
                info = png_info.build(studio)

        # "Send to": a picture and its parameters go to another tab, which is shown.
        wire_sends(studio, tabs, t2i, i2i, inp, up, info, cls, lay)

        # A new model in weights/ (a training run exported, a file copied in): every picker and the
        # note at the top are read again, on page load and after "Use this model".
        pickers = [(t2i.picker, "txt2img"), (cls.picker, "classgen"), (i2i.picker, "img2img"), (inp.picker, "inpaint"), (up.picker, "upscale"),
                   (lay.picker, "layout")]

        def refresh_all(*current):
            return [picker_update(studio, tab, value) for (_, tab), value in zip(pickers, current)] + \
                [models_banner(studio)]

        refresh_outputs = [p for p, _ in pickers] + [banner]
        demo.load(refresh_all, inputs=[p for p, _ in pickers], outputs=refresh_outputs,
                  api_visibility="private", queue=False)
        tr.exported.change(refresh_all, inputs=[p for p, _ in pickers], outputs=refresh_outputs,
                           api_visibility="private", queue=False)
    demo.queue(default_concurrency_limit=1)
    return demo


def launch_options(settings: AppSettings, studio: Studio | None = None) -> dict:
    """Keyword arguments of demo.launch() for `settings`; with --api, `studio`'s /sdapi/v1 routes
    are handed to the server's FastAPI app (app_kwargs routes: they come before Gradio's own)."""
    outputs = Path(settings.outputs_dir).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    extra = {}
    if settings.api:
        from ui.api_a1111 import api_router
        extra["app_kwargs"] = {"routes": api_router(studio or Studio.create(settings)).routes}
    return dict(**extra, server_name=settings.host, server_port=settings.port, share=settings.share,
                auth=list(settings.auth) or None, max_file_size=f"{settings.max_upload_mb}mb",
                allowed_paths=[str(outputs), str(Path(settings.runs_dir).resolve())],
                js=f"() => {{ ({KEYBOARD_JS})(); ({FIT_JS})(); }}", css=CSS, footer_links=["api"],
                show_error=True, inbrowser=False,
                # Gradio's own lines ("set `share=True` in `launch()`") name its API, not our flags:
                # startup_report says where to open and how to share; a share link is still printed.
                quiet=not settings.share)


def startup_report(settings: AppSettings) -> str:
    """What the console says on start: device, models found (or missing), the URL."""
    from ui.models import ModelCache
    entries, problems = ModelCache(settings.weights_dir, settings.device, settings.dtype).scan()
    lines = [f"LDM Studio: device {settings.device} ({settings.dtype})",
             f"models in {settings.weights_dir}/: " + (", ".join(f"{e.name} [{e.task}]" for e in entries) or "none")]
    lines += [f"  cannot use {name}: {why}" for name, why in problems.items()]
    if not entries:
        lines.append("  no model yet: train one in the Train tab (then 'Use this model'), or see the README")
    host = "127.0.0.1" if settings.host == "0.0.0.0" else settings.host
    lines.append(f"open http://{host}:{settings.port}" + (" (also on your network: --listen)"
                                                           if settings.host == "0.0.0.0" else ""))
    if not settings.share:
        lines.append("  a public link for others: start with --share (a login is generated and printed)")
    return "\n".join(lines)
