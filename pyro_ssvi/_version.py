#: The version of pyro_ssvi (PEP 440).
__version__ = "0.1.0"
