"""Pieces every stage may import: nothing here imports train/, export/, serving/ or loadtest/."""
