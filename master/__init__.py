"""The Daybook master: watches mappings and assets, publishes sync events, collects results."""
