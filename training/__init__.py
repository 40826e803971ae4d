"""Same2X training for DirectAnimator: data preparation, the procedural world and the training stages."""
