"""shield worker agent: joins a PS, computes per-file gradients with torch."""
