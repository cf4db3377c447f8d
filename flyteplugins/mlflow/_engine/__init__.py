"""The engine: what one tracked call does, put together. Loaded when the first tracked call starts."""
