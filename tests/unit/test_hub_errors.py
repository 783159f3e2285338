"""os-ken's native hub took every exception for a normal end of a task: one failed event handler
silently ended its app's event loop. controller/hub_errors.py gives the hub a TaskExit of its own."""

from __future__ import annotations

import time

from os_ken.base import app_manager
from os_ken.controller import event, handler
from os_ken.lib import hub

from controller.hub_errors import HubTaskExit, surface_hub_errors


class Ping(event.EventBase):
    pass


class Fragile(app_manager.OSKenApp):
    """An app whose handler fails on the first event."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handled = 0

    @handler.set_ev_cls(Ping)
    def on_ping(self, ev):
        self.handled += 1
        if self.handled == 1:
            raise ValueError("a handler failed once")


def events_handled(count: int) -> int:
    app = Fragile()
    app_manager.register_app(app)
    try:
        app.start()
        for _ in range(count):
            app._send_event(Ping(), None)
        deadline = time.monotonic() + 5
        while app.handled < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        return app.handled
    finally:
        app.stop()  # its event loop's thread would keep the test process alive
        app_manager.unregister_app(app)


def test_an_app_goes_on_after_a_handler_fails_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(hub, "TaskExit", Exception)  # os-ken 4.x's native hub as shipped
    assert events_handled(3) == 1  # the loop ended at the first failure, without a word
    assert "a handler failed once" not in caplog.text
    surface_hub_errors()
    assert hub.TaskExit is HubTaskExit
    assert events_handled(3) == 3
    assert "a handler failed once" in caplog.text
