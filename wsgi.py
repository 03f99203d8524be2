"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

from logger.app import create_app
from logger.config import Settings

app = create_app(Settings.from_env())
