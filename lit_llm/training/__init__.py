"""Training techniques as plain functions that callbacks and modules share."""
