"""shield worker agent: joins a PS and computes per-file gradients with the model library (:mod:`shield_model`)."""
