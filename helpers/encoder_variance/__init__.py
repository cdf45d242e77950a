"""Everything behind notebook 02_encoder_variance."""
