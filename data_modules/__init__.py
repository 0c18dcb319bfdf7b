"""Lightning DataModules and data-set discovery/checking for tgrowth (files -> records -> batches)."""
