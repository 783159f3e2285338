"""ndt: a network digital twin that runs as a closed-loop SDN controller application."""

__version__ = "0.1.0"
