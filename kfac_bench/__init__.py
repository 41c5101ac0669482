"""kfac-bench: K-FAC factor-statistic variants inside one ACKTR trainer, swept and analysed."""

__version__ = "0.1.0"
