"""The site coordinator: the layer above the nodes (docs/site.md)."""
