"""LDM Studio web app: `python app.py` serves http://127.0.0.1:7860 on the models in weights/.

    python app.py                          # local only, on the default weights
    python app.py --listen --auth me:pw    # on the local network, behind a login
    python app.py --share                  # a public gradio.live link; credentials generated and printed

Parse the flags, build the UI (ui/), launch. Everything the UI does is also a named API endpoint
(gradio_client), listed in the README.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")    # before gradio is imported: no telemetry

import sys  # noqa: E402

from ui.blocks import build_app, launch_options, startup_report  # noqa: E402
from ui.settings import parse_args, with_share_credentials  # noqa: E402
from ui.studio import Studio  # noqa: E402

__all__ = ["build_app", "main"]


def main(argv: list[str] | None = None) -> None:
    settings, credentials = with_share_credentials(parse_args(argv))
    studio = Studio.create(settings)                # one model cache and job queue for the UI and --api
    demo = build_app(settings, studio)
    print(startup_report(settings), flush=True)
    if credentials:
        print(credentials, flush=True)
    elif settings.host == "0.0.0.0" and not settings.auth:
        print("warning: --listen without --auth: anyone on your network can use this app", file=sys.stderr)
    if settings.api and not settings.api_logins and (settings.host == "0.0.0.0" or settings.share):
        print("warning: --api without --api-auth or --auth: anyone who reaches this server can use its API",
              file=sys.stderr)
    demo.launch(**launch_options(settings, studio))


if __name__ == "__main__":
    main()
