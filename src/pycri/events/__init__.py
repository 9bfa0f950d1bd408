"""The event monitor: exit monitors, the per-ID backoff queue, containerd's event stream."""
