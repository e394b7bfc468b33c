"""Every way results go out: the webhook sender (``webhook.py``), the queue
folder's done/ and failed/ files (``folder.py``), the chat channels' replies
(``chat.py``). A sink reads the store and
the bus and writes outwards; it is run by a loop of ``corral.server`` and
never imports the routes or the composition root."""
