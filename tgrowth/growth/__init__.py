"""Fisher-Kolmogorov tumour growth: the shared solver (``tgrowth.growth.fk``). Pure torch (+numpy/scipy)."""
