"""Pipeline stages. Each reads and writes plain files in the run directory and can be rerun alone."""
