"""Daybook: pull-based deployment of service tarballs from S3 to fleets of hosts."""

__version__ = "0.1.0"
