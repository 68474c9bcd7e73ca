"""LDM Studio web app (placeholder).

The Gradio app arrives with issue 5 ("The Gradio web app"). Until then this entry point says so,
so the README's first command runs on a fresh machine.
"""


def main() -> None:
    print("LDM Studio: the web app is not built yet; it arrives with issue 5 (the Gradio web app).")
    print("The core library is usable now: `from core import load_model`.")


if __name__ == "__main__":
    main()
