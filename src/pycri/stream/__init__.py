"""CRI streaming (Exec, Attach, PortForward): the HTTP server, SPDY and WebSocket."""
