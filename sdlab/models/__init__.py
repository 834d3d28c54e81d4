"""Models: loading, family adapters, schedulers, architectures, tokenizers and sampling."""
