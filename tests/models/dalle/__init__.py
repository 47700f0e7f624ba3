"""DALL-E tests."""
