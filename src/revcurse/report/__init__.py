"""Figures (matplotlib) and self-contained HTML / Markdown reports."""
