"""Everything behind notebook 03_checkpoint_divergence."""
