"""tgrowth: predict brain tumour growth with a mechanistic ODE and gradient-guided DDIM diffusion.

Sub-packages (each importable with torch alone, so GPU benchmarks run without the data stack):
``tgrowth.ode`` (growth laws, batched fits, forecasts), ``tgrowth.diffusion`` (schedule, UNet,
sampler, guidance, Lightning modules), ``tgrowth.metrics``, ``tgrowth.probability``,
``tgrowth.synth`` (synthetic phantom), ``tgrowth.predict`` (the end-to-end pipeline).
"""

__version__ = "0.1.0"
