"""Where assets live: the `Store` protocol (`base`), S3 (`s3`) and a local directory
(`local`), chosen by `open_store(url)`."""
