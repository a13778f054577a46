"""The prediction API: settings, schemas and the ASGI application that serves the model."""
