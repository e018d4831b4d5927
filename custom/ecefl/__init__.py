"""ECE-FL: federated, interpretable detection of extranodal extension on head-and-neck CT."""
__version__ = "0.1.0"
