"""The learned image codec: the model (analysis, synthesis, hyperprior), its spatial-channel context
model, the entropy coder, the coded post-filter, latent refinement, and the codec built on them."""
