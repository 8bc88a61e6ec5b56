"""Reversal datasets: one record type (:mod:`.schema`), builders and loaders, vocabularies."""
