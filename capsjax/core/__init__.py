"""What every layer builds on, with no capsjax import of its own: the squash nonlinearity and
capsule lengths (Eq. 1), the run's named random streams, the one-line error text and the value
kinds that settings are checked against."""
