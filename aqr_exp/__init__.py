"""aqr-exp: honest baseline-vs-variant experiments for AQR on the CMT detector."""

__version__ = "0.1.0"
