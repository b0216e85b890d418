"""The operations web console: the centre service (``service``), its database (``store``),
the web app (``app``) and its command line (``run``). See docs/centre.md."""
