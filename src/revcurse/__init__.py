"""revcurse: reproduce, measure and extend the reversal curse in masked diffusion vs autoregressive LMs.

The toolkit follows arXiv 2602.02133: with shared attention weights and RoPE, the forward and reverse
attention scores of a fact are positively correlated and the gradients of the forward and reverse
losses are aligned, so a masked diffusion model (MDM) trained on "A is B" also learns "B is A", while
an autoregressive model (ARM) does not.
"""

__version__ = "0.1.0"
