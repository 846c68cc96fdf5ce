"""Pretraining jobs that make the small base models and reward models the project's recipes use."""
