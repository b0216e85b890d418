"""The operations web console: the centre service (``service``), its database (``store``),
the web app (``app``) and its command line (``run``). See docs/centre.md."""

# How long the boxes' timelines are kept (store.FleetDb, `console-web --keep-history-days`).
DEFAULT_HISTORY_DAYS = 30.0
