"""The model (parts): the encoder, heads and losses with a variant's adapter (`network`), and the
parameter accounting (`params`)."""
from harness.model.network import *  # noqa: F401,F403  (harness.model, as before the package)
