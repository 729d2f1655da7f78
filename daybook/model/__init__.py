"""The pure domain: one frozen type per concept, with the rules its fields obey. Imports
nothing but the standard library and `daybook.errors`."""
