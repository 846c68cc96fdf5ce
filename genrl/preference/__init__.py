"""Preference reward modelling: pairwise data, labelling, Bradley–Terry training."""
