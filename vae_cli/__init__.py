"""vae-cli: a reproducible command-line experiment runner for Auto-Encoding Variational Bayes
(Kingma & Welling, 2013). Reading order: distributions -> models -> estimators -> aevb -> train."""

__version__ = "0.1.0"
