"""The HTTP API, the chat page and the chiffonctl client."""
