"""The command line and Hydra: the only code that imports hydra or omegaconf."""
