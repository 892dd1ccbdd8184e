"""Orders: accepts orders over the API and follows them to their final status."""
