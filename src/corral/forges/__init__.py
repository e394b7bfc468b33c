"""Clients of the issue trackers corral takes work from and reports to:
GitHub REST v3 (``github.py``) and Forgejo/Gitea ``/api/v1`` (``forgejo.py``),
one ``Forge`` interface (``base.py``). Only what the tracker intake and sink
need: issues, comments, labels, pull requests, repositories, and the
signatures of their webhooks. Third-party wire formats, so no corral layer
below them: they import the pure core only."""

from typing import Any

from corral.forges.base import Comment, Credential, Forge, ForgeError, Issue, Listing, RateLimited
from corral.forges.forgejo import Forgejo
from corral.forges.github import GitHub

KINDS: dict[str, type[Forge]] = {"github": GitHub, "forgejo": Forgejo}


def make(kind: str, base_url: str | None, credential: Credential, **kwargs: Any) -> Forge:
    """The client of a tracker of ``kind`` (``github`` or ``forgejo``)."""
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown tracker kind {kind!r}: github or forgejo") from None
    return cls(base_url, credential, **kwargs)


__all__ = [
    "KINDS",
    "Comment",
    "Credential",
    "Forge",
    "ForgeError",
    "Forgejo",
    "GitHub",
    "Issue",
    "Listing",
    "RateLimited",
    "make",
]
