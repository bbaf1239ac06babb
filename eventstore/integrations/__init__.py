"""Adapters that let other libraries keep their events in eventstore; each needs its own extra
(``pip install eventstore[eventsourcing]``) and is imported only by whoever uses it."""
