"""Turning exceptions into messages the browser shows, so a bad request never ends the studio."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import gradio as gr

from engines.errors import DistilleryError

log = logging.getLogger("studio")
GENERIC = "Something went wrong ({name}); the studio is still running and the details are in its log. Try again."


def to_gr_error(err: BaseException) -> gr.Error:
    """A Distillery error keeps its own (actionable) message; anything else is logged and kept short."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, DistilleryError):
        log.info("request refused: %s", err)
        return gr.Error(str(err), print_exception=False)
    log.error("unexpected error in a studio handler", exc_info=err)
    return gr.Error(GENERIC.format(name=type(err).__name__), print_exception=False)


def user_errors(fn: Callable) -> Callable:
    """Decorate a Gradio handler (plain or generator) so every failure reaches the user as a gr.Error."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise to_gr_error(err) from err

        return generator

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise to_gr_error(err) from err

    return plain
