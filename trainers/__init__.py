"""The offline QT-Opt trainer: Q-network, CEM, clipped double Q, checkpoints, evaluation, export."""
