"""The Textual console: watch and steer the consumers of one config.

Layers, from the engine outwards:

- :mod:`~kafkaconsole.tui.source` — where the console's data comes from: an :class:`Engine`
  running in the app (plus the fleet as Redis sees it), or fixed data for tests and screenshots
  (:mod:`~kafkaconsole.tui.sample` holds such a fleet);
- :mod:`~kafkaconsole.tui.viewmodel` — plain dataclasses and formatting built from snapshots,
  with an injected clock (no Textual here);
- :mod:`~kafkaconsole.tui.widgets` and :mod:`~kafkaconsole.tui.screens` — how it looks;
  :mod:`~kafkaconsole.tui.themes` turns theme files into Textual themes;
- :mod:`~kafkaconsole.tui.bindings` — every key, with the id ``[ui.keymap]`` remaps;
- :mod:`~kafkaconsole.tui.logcapture` — log records to the log panel, never to the terminal;
- :mod:`~kafkaconsole.tui.app` — actions, the engine worker, refresh timers.
"""
