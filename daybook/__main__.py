"""Allow `python -m daybook`."""

from daybook.cli.main import main_entry

main_entry()
