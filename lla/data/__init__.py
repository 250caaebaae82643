"""Input pipelines: embedded procedural data by default, image folders, IDX files, TFDS."""
