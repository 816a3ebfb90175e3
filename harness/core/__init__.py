"""The foundation's settings and names (no torch): the run config (`config`), strings to typed values
(`values`), the MLflow names one part writes and another reads (`names`), reading an Accelerate
launch config (`launch_config`) and entry-point plugin loading (`plugins`)."""
