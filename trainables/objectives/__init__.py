"""Training objectives: losses and evaluation metrics."""
