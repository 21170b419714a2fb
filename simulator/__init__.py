"""Simulated Antminer and Whatsminer rigs that speak the real protocols over real sockets."""
