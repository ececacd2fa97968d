"""Training: the loop with selection on dev and resume, one epoch's steps."""
