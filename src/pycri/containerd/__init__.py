"""Typed asyncio access to containerd: the generated API, the client, and the supervisor."""
