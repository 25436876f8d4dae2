"""Data loading and synthetic data generation."""
