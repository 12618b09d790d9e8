"""What a widget's output shows where no kernel runs it: nbconvert's HTML, GitHub, a colleague's viewer,
an editor whose widget renderer fails. Each display carries, beside the live widget view, ``text/html``
(an inline SVG of the curve, the status, the progress) and a one-line ``text/plain``; frontends with a
kernel show the live view, the others the picture.

The picture is kept current by display updates (IPython's ``update_display``), so a notebook saved
after the run shows its last state. A live frontend renders the widget view anew on each update (and
reloads an embedded TensorBoard), so a widget calls ``refresh_static()`` when what it shows has changed
in a way worth keeping: a job's status, a frame that has loaded, not every poll.
"""
from __future__ import annotations

import threading

_LOCK = threading.Lock()  # updates are rare: one lock for every widget's list of outputs


class StaticFallback:
    """A mixin for an ``ipywidgets`` widget: define ``static_html()`` (and ``static_text()``), call
    ``refresh_static()`` when the picture should follow the widget."""

    def static_html(self) -> str:
        raise NotImplementedError

    def static_text(self) -> str:
        return type(self).__name__

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)  # the widget view (ipywidgets)
        if not data:
            return data
        return {**data, "text/plain": self.static_text(), "text/html": self.static_html()}

    def _ipython_display_(self) -> None:
        """Shown as an output with a display id (also as a cell's value), so that it can be updated."""
        from IPython.display import display  # noqa: PLC0415

        handle = display(self._repr_mimebundle_(), raw=True, display_id=True)
        if handle is not None:
            with _LOCK:
                self.__dict__.setdefault("_display_ids", []).append(handle.display_id)

    def refresh_static(self) -> None:
        """Send the current picture to every output this widget is shown in."""
        from IPython.display import update_display  # noqa: PLC0415

        with _LOCK:
            ids = list(self.__dict__.get("_display_ids", ()))
        if ids:
            data = self._repr_mimebundle_()
            for display_id in ids:
                update_display(data, raw=True, display_id=display_id)
