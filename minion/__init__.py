"""The Daybook minion: follows the master's sync events, installs what is missing, reports."""
