"""`neverstop bench <stage>`: each stage measured against a peer in one run."""
