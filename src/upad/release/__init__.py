"""Science database upload and data releases."""
