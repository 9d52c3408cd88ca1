"""Face generators ("priors") the solver searches, and how their checkpoints are found and read."""
