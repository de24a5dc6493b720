"""The synthetic shapes world and the training of the embedded model."""
