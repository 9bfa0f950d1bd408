"""The CRI services: one module per RPC (family), as in containerd's CRI plugin."""
