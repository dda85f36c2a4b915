"""trainforge's bundled trainer and inference server (`python -m trainforge_trainer`).

Kept import-light (no torch here): `python -m trainforge_trainer train` rejects a bad config
before paying for the torch import. Loading API for serving: trainforge_trainer.checkpoint.
"""
