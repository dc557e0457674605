"""shield parameter server: placement, Byzantine-robust aggregation and the training daemon."""
