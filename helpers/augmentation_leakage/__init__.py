"""Everything behind notebook 05_augmentation_leakage."""
