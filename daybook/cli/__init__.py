"""The `daybook` command: `main` builds it from one module per command group.

assets (push, assets, pull), mappings and plan (map), fleet (sync, status, keys) and
daemons (master, minion: the only module that imports those packages), with backends and
output shared by the commands.
"""
