"""Everything behind notebook 01_r2_gap."""
