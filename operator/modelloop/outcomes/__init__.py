"""Outcomes: prediction and label records (their format and store layout) and the join that turns them into
live performance. See docs/outcomes.md."""
