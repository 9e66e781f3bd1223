"""vidcom2-cli: ask questions about videos with VidCom2-compressed visual tokens."""

__version__ = "0.1.0"
