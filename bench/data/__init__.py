"""Offline domain-text pipeline for the continual-learning benchmark."""
