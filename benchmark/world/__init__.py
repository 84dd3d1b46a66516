"""The embedded offline world: procedural captioned images, a toy model zoo and toy datasets."""
