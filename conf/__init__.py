"""vae-cli's Hydra config tree, installed as the package `vae_cli.conf` (see pyproject.toml)."""
