"""seltrain: train and analyse CNNs with the class-selectivity regularizer.

loss = CE - alpha * mean SI (Leavitt & Morcos, ICLR 2021); see README.md and docs/METHODS.md.
"""
__version__ = "0.1.0"
