"""A Streamlit session over the server's own websocket, without a browser: what a tab sends, and nothing it
must not. It speaks the protocol the browser speaks (``BackMsg.rerun_script`` with widget states, read
back as ``ForwardMsg`` deltas until ``script_finished``), so a test can hold many real sessions on one
``streamlit run`` server at little cost, and send widget values no widget offers (a forged request)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from streamlit.proto.Alert_pb2 import Alert
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ClientState_pb2 import ClientState
from streamlit.proto.Element_pb2 import Element
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState, WidgetStates
from websockets.sync.client import connect

FINISHED = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_WITH_COMPILE_ERROR}


@dataclass
class Page:
    """What one script run drew: texts by kind, error lines, exceptions, widget ids by key."""

    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)

    def text(self) -> str:
        return " | ".join(self.texts)


class Session:
    """One tab on ``page`` (its URL path, e.g. 'Beta_tuning'); ``run`` reruns it with changed widget values."""

    def __init__(self, base: str, page: str, timeout: float = 120) -> None:
        self.page, self.timeout = page, timeout
        self.ws = connect(base.replace("http://", "ws://") + "/_stcore/stream", subprotocols=["streamlit"],  # type: ignore[list-item]
                          open_timeout=timeout, max_size=None)  # fmt: skip
        self.ids: dict[str, tuple[str, str]] = {}  # widget key -> (id, element kind)
        self.last = Page()
        self.restarted = False  # the last run was cut short by the script's own st.rerun() and ran again

    def close(self) -> None:
        self.ws.close()

    def state(self, key: str, value: object) -> WidgetState:
        """A widget value as the browser sends it; a key the page does not draw gets a made-up id."""
        ident, kind = self.ids.get(key, (f"$$ID-forged-{key}", "text_input" if isinstance(value, str) else ""))
        widget = WidgetState(id=ident)
        if kind == "button" or value is True and kind == "":
            widget.trigger_value = True
        elif kind == "slider":
            widget.double_array_value.data[:] = [float(value)]  # type: ignore[arg-type]
        elif kind == "checkbox":
            widget.bool_value = bool(value)
        elif isinstance(value, str):
            widget.string_value = value
        else:
            widget.double_value = float(value)  # type: ignore[arg-type]
        return widget

    def run(self, **widgets: object) -> float:
        """Rerun the page with ``widgets`` (key -> value; True clicks a button); seconds until the run ended
        (reruns the script asks for included). ``self.last`` holds what it drew."""
        states = WidgetStates(widgets=[self.state(key, value) for key, value in widgets.items()])
        message = BackMsg(rerun_script=ClientState(query_string="", widget_states=states, page_name=self.page))
        started = time.monotonic()
        self.ws.send(message.SerializeToString())
        page, self.restarted = Page(), False
        while True:
            left = self.timeout - (time.monotonic() - started)
            if left <= 0:
                raise TimeoutError(f"{self.page}: no finished run within {self.timeout} s")
            forward = ForwardMsg()
            forward.ParseFromString(self.ws.recv(timeout=left))
            kind = forward.WhichOneof("type")
            if kind == "new_session":
                page = Page()
            elif kind == "delta" and forward.delta.WhichOneof("type") == "new_element":
                self.read(forward.delta.new_element, page)
            elif kind == "script_finished" and forward.script_finished in FINISHED:
                self.last = page
                return time.monotonic() - started
            elif kind == "script_finished" and forward.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                self.restarted = True

    def read(self, element: Element, page: Page) -> None:
        kind = element.WhichOneof("type")
        proto = getattr(element, kind)
        ident = getattr(proto, "id", "")
        if ident.startswith("$$ID-"):
            self.ids[ident.split("-", 2)[2]] = (ident, kind)
        if kind == "alert":
            page.texts.append(proto.body)
            if proto.format == Alert.ERROR:
                page.errors.append(proto.body)
        elif kind == "exception":
            page.exceptions.append(f"{proto.type}: {proto.message}")
        elif kind in ("markdown", "text"):
            page.texts.append(proto.body)
        elif kind == "progress":
            page.texts.append(proto.text)
        elif kind == "button":
            page.texts.append(f"[{proto.label}{' (disabled)' if proto.disabled else ''}]")
