"""Mechanism probes of arXiv 2602.02133: attention-score coupling, gradient alignment, back-propagated
error signals, and the closed-form RoPE theory; :mod:`.runner` runs them as training callbacks."""
