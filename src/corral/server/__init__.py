"""The composition root of ``corral serve``: ``Server(settings)`` builds the
services, the app and the loops and owns start-up and shutdown order;
``factory`` is the same process for ``uvicorn --factory corral.server:factory``.

A new intake source is a module in ``intake/`` plus one line in
``Server.__init__``: ``self.loop("tracker", tracker.run, leader=True, intake=True)``."""

from corral.server.server import Server, factory

__all__ = ["Server", "factory"]
