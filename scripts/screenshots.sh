#!/usr/bin/env bash
# The README's screenshots (docs/screenshots/), made on the default models in weights/ by the browser
# tests themselves: a real `python app.py` serving weights/, driven by Playwright in Chromium.
#   bash scripts/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LDM_TEST_WEIGHTS=weights LDM_SCREENSHOTS=docs/screenshots python -m pytest -q tests/test_browser.py tests/test_browser_layout.py "$@"
