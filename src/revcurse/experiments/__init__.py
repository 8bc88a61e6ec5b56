"""Named experiments: each trains a set of models and writes one self-describing output directory."""
