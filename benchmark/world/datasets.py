"""Toy datasets of the embedded world (placeholder: registered when the world lands)."""
