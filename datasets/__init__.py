"""TFDS dataset builders of the CSPSR project (see datasets/README.md).

Importing `datasets.<name>` registers the builder `<name>` with TFDS, so that
`tfds.load("<name>", ...)` works afterwards.
"""
