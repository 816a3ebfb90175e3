"""Tracking (parts): one MLflow run written through a queue that survives store outages, system
metrics, the tracking store's checks (`tracker`)."""
from harness.tracking.tracker import *  # noqa: F401,F403  (harness.tracking, as before the package)
