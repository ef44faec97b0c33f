"""The hwsearch HTTP service: ``create_app(store, token=..., data_dir=...)``.

Layout: ``schemas`` (request/response bodies), ``service`` (framework-free
functions), ``routes`` (thin FastAPI routes), ``catalog`` (registered
supernets and devices), ``app`` (the factory).
"""
