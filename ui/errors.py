"""Errors reach the user as one plain sentence (gr.Error), never a stack trace; the server stays up.

`user_errors` wraps a handler: a ValueError (what core raises for bad input) becomes gr.Error with
its message; anything unexpected is printed with its traceback to the server log and reaches the
user as one sentence naming it. Generator handlers stay generators, so Gradio still streams them.
"""
import functools
import inspect
import traceback

import gradio as gr

from core.checkpoints import CheckpointError

USER_ERRORS = (ValueError, CheckpointError, FileNotFoundError)


def _as_gr_error(err: Exception) -> gr.Error:
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, USER_ERRORS):
        return gr.Error(str(err), print_exception=False)
    traceback.print_exc()
    return gr.Error(f"Something went wrong ({type(err).__name__}: {err}). The server log has the details.",
                    print_exception=False)


def user_errors(fn):
    """Decorate a handler so every failure reaches the browser / gradio_client as a plain gr.Error."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise _as_gr_error(err) from None
        return generator

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise _as_gr_error(err) from None
    return plain
