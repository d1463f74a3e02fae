"""The OpenADR bridge: the facility's VEN (docs/openadr.md)."""
