"""Trainable components: data preparation (once per dataset), the data trials read, models, objectives."""
