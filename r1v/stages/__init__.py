"""Training stages: one LightningModule per training family."""
