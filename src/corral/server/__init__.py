"""The composition root of ``corral serve``: ``Server(settings)`` builds the
services, the app and the loops and owns start-up and shutdown order;
``factory`` is the same process for ``uvicorn --factory corral.server:factory``.

A new intake source is a module in ``intake/`` plus one line in
``Server.__init__``: ``self.loop("tracker", tracker.run, leader=True, intake=True)``.

``Server`` and ``factory`` load on first use: ``corral.server.build`` (which
`corral keys` uses to open the store) does not load the app, every route and
the dashboard with it (about 2 s of CPU per command)."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.server.server import Server, factory

__all__ = ["Server", "factory"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from corral.server import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
