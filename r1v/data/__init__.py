"""Datasets, image preprocessing, chat templates and collation."""
