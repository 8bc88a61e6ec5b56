"""Models: the small from-scratch Transformer (MDM encoder / ARM decoder) and positional encodings."""
