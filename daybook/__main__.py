"""Allow `python -m daybook`."""

from daybook.cli import main_entry

main_entry()
