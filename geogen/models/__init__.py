"""Whole networks (pure torch.nn.Modules, free of Lightning, Hydra and I/O).

- :mod:`geogen.models.dgmr`: DGMR (Ravuri et al. 2021), generator and discriminators.
"""
