"""The `hydra/sweeper=optuna` preset's sweeper (conf/hydra/sweeper/optuna.yaml); its work is in simpsons/search.py.

Hydra instantiates sweepers only from the `hydra_plugins` namespace package, and imports every
module here when it looks for plugins: each imports only Hydra's base class (Optuna is imported
when a search starts; it is in the `search` extra).
"""
