"""What train.py does before Hydra's main and before the backend loads: quiet start-up,
override typos."""
