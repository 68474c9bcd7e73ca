"""Keyboard shortcuts, as in AUTOMATIC1111's UI: Ctrl+Enter (Cmd+Enter) generates, Esc interrupts.

A small script given to Gradio's launch(js=...): it clicks the Generate / Interrupt button of the
tab that is showing (buttons carry the classes `ldm-generate` / `ldm-interrupt`; hidden tabs'
buttons have no layout box, so `offsetParent` is null for them).
"""

KEYBOARD_JS = """
() => {
  const visible = (selector) =>
    Array.from(document.querySelectorAll(selector)).find((el) => el.offsetParent !== null);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      const button = visible("button.ldm-generate");
      if (button) { event.preventDefault(); button.click(); }
    } else if (event.key === "Escape") {
      const button = visible("button.ldm-interrupt");
      if (button) { button.click(); }
    }
  }, true);
}
"""
