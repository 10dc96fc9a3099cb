"""The Jinja2 templates ``ember deploy`` renders and the images' Dockerfiles (data, no code)."""
