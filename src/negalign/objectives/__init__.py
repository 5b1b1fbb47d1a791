"""Training objectives: every loss as a pure function of log-prob tensors (losses), the method
registry the training loop calls (registry), and the method names alone (names, no torch).

Kept free of imports so that `negalign.objectives.names` stays cheap for config checks.
"""
