"""One module per local server; each exposes a ``Server`` (see ``infra.servers.base``)."""
