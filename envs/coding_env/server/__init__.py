"""Server side of the coding env."""
