"""Data pipelines: each a LightningDataModule chosen by the ``data`` config group."""
