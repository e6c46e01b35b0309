"""The pure domain core: events, customer state, segment rules and transitions. No I/O here."""
