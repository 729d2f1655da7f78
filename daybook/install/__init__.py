"""Installing versions on a host: the installer, its lock, and the streaming extractor
whose safety rules live apart in `safety`."""
