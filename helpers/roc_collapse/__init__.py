"""Everything behind notebook 04_roc_collapse."""
