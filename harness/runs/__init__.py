"""Runs: one training (`train`: preflight and the entry point; `setup`: the Run; `loop`: the steps;
`finish`: evaluation, saved model, timing), a saved run's format (`saved`) and its use (`use`:
evaluate, predict), `export`, and the MLflow model (`mlflow_model`)."""
