"""OCI runtime specs for sandboxes and containers, built from CRI configs and images."""
