"""Apache Beam pipelines: raw sim logs and robot bags -> validated RLDS datasets."""
