"""WSGI entry point: ``gunicorn wsgi:app``."""
from healthhub import create_app

app = create_app()
