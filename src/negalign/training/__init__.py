"""Training: the examples and groups of a run, anchor sampling, cached reference log-probs, and the
loop (setup, one train step callable alone, checkpoints, final save), with online resampling.

Each stage reads and writes plain files of the run directory (negalign.base.rundir).
"""
