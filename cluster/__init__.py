"""Where and how sweeps run: the Tune driver, MLflow wiring, resources, the CLI."""
