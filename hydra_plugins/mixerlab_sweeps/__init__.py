"""mixerlab's Hydra plugins: the local parallel launcher and the adaptive-seed sweeper (found by Hydra
because they live in the ``hydra_plugins`` namespace package, from the repository root)."""
