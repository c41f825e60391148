"""`hyinf serve`: the plans and cost-model registry a fleet of machines shares, over HTTP and JSON."""
