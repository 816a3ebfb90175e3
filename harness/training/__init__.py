"""The pieces a training run is built from (parts): data files and tokenising (`data`), the optimizer
and schedule (`optim`), what a launch fixes (`distributed`), checkpoints (`checkpoint`), dev metrics
and predictions (`evaluation`), and the tool that makes the bundled Quora split (`quora_split`)."""
