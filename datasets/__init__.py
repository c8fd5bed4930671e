"""TFDS dataset definitions and the mixing stage (RLDS episodes -> weighted transition streams)."""
