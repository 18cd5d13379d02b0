"""The neighbouring methods, kept apart from the method's own modules (model, schedule, loss, data,
metric and checkpoint modules never import from here):

* ``timeshift``: the Time-Shift sampler (Li et al., ICLR 2024), ``ts-ddim`` and ``ts-pndm``;
* ``restart``: EDM's Heun sampler and Restart sampling (Xu et al., NeurIPS 2023);
* ``skiptuning``: Skip-Tuning (Ma et al., ICML 2024), a model wrapper;
* ``epsscale``: epsilon scaling (Ning et al. 2023) and the scaling S²-DM's loss implies;
* ``cdm``: the Consistent Diffusion Models loss (Daras et al., NeurIPS 2023), training arm ``cdm``.

The samplers are registered by lib.samplers, which imports them explicitly.
"""
