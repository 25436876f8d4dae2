"""Trainable components: data, models, objectives."""
