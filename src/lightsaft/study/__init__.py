"""Studies: many experiments of one pipeline, run locally or on a cluster, and compared."""
